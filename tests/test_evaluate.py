"""`cnn evaluate`: numbers equal scikit-learn's on the same predictions, the CI gate, the figures.

One net2 run on scikit-learn's digits (offline) is trained once and shared with test_predict.py
through `trained_run`; most checks call the library in-process (JAX compiles once), the exit
codes and the absence of tracebacks are checked on the real command in a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.console import Out
from cnncli.errors import CnnError
from cnncli.evaluate import dataset_for, evaluate, metrics, output_tag, report_rows, worst_errors
from cnncli.runs import load_run
from cnncli.train import resolve
from cnncli.train.engine import fit
from cnncli.train.progress import Progress

_RUNS: dict = {}


def trained_run(tmp_path_factory, name: str, **opts) -> dict:
    """Train a small run once per session (shared by the test modules) and return fit's summary."""
    if name not in _RUNS:
        out = tmp_path_factory.mktemp(name)
        cfg = dict(arch="net2", epochs=2, batch_size=32, seed=0, out=str(out)) | opts
        _RUNS[name] = fit(resolve(cfg), Progress(Out(json=True), quiet=True))
    return _RUNS[name]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cnncli.cli", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return trained_run(tmp_path_factory, "digits", dataset="digits")


@pytest.fixture(scope="module")
def evaluation(digits):
    return evaluate(digits["run_dir"])


def test_numbers_equal_scikit_learn_and_training(digits, evaluation):
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    run = load_run(digits["run_dir"])
    ds, notes = dataset_for(run)
    assert notes == []  # same files, same preprocessing: the fingerprint recorded at training matches
    pred = run.probabilities(ds.test.x).argmax(-1)
    assert evaluation.report == classification_report(ds.test.y, pred, target_names=run.classes,
                                                       output_dict=True, zero_division=0)
    assert evaluation.confusion_matrix == confusion_matrix(ds.test.y, pred).tolist()
    assert evaluation.accuracy == accuracy_score(ds.test.y, pred)
    # The same split and weights as training's own test pass: its numbers come back.
    assert evaluation.n == 359 == sum(map(sum, evaluation.confusion_matrix))
    assert evaluation.accuracy == pytest.approx(digits["test_accuracy"], abs=1e-9) and evaluation.accuracy > 0.9
    assert evaluation.loss == pytest.approx(digits["test_loss"], rel=1e-4)
    assert (evaluation.checkpoint, evaluation.epoch) == ("best", digits["best_epoch"])


def test_metrics_of_known_predictions():
    # Labels 0,0,1,1 predicted 0,1,1,1: class 0 precision 1, recall 1/2; class 1 precision 2/3, recall 1.
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]], np.float32)
    m = metrics(np.array([0, 0, 1, 1]), probs, ["cat", "dog"])
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["report"]["cat"]["recall"] == 0.5 and m["report"]["dog"]["precision"] == pytest.approx(2 / 3)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.7])), rel=1e-6)
    rows = report_rows(m["report"], ["cat", "dog"])
    assert [r[0] for r in rows] == ["cat", "dog", "accuracy", "macro avg", "weighted avg"]
    assert rows[2] == ["accuracy", "", "", 0.75, 4]


def test_worst_errors_most_confident_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95], [0.7, 0.3]])
    y = np.array([0, 0, 0, 0, 1])  # wrong: rows 1 (0.8), 2 (0.6), 3 (0.95), 4 (0.7)
    assert worst_errors(y, probs).tolist() == [3, 1, 4, 2]
    assert worst_errors(y, probs, k=2).tolist() == [3, 1]


def test_writes_real_pngs_and_report(digits, evaluation):
    run_dir = Path(digits["run_dir"])
    assert evaluation.files == {"confusion_matrix": str(run_dir / "confusion_matrix.png"),
                                "errors": str(run_dir / "errors.png"), "report": str(run_dir / "report.json")}
    for name, min_size in (("confusion_matrix.png", (900, 400)), ("errors.png", (600, 300))):
        with Image.open(run_dir / name) as im:
            im.verify()
        with Image.open(run_dir / name) as im:
            assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["accuracy"] == evaluation.accuracy and saved["confusion_matrix"] == evaluation.confusion_matrix
    assert saved["report"]["macro avg"]["support"] == 359


def test_other_splits_and_checkpoints_do_not_overwrite(digits):
    run_dir = Path(digits["run_dir"])
    before = (run_dir / "report.json").read_bytes()
    ev = evaluate(run_dir, split="val", checkpoint="last")
    assert ev.n == json.loads((run_dir / "config.json").read_text())["data"]["sizes"]["val"] == 144
    assert (ev.checkpoint, ev.epoch) == ("last", 2)
    assert Path(ev.files["report"]).name == "report_val_last.json" and (run_dir / "errors_val_last.png").is_file()
    assert (run_dir / "report.json").read_bytes() == before
    assert output_tag(None, "test", "best") == "" and output_tag("mnist", "test", "best") == "_mnist_test"
    with pytest.raises(CnnError, match="--split must be one of"):
        evaluate(run_dir, split="dev")


def test_test_time_views_chosen_on_validation(digits):
    """--tta-* replace the run's views for one evaluation (to choose them on the validation split): the
    mirror view's probabilities are the mean of the image's and its mirror's, and the files get a suffix
    of their own."""
    run_dir = Path(digits["run_dir"])
    plain = evaluate(run_dir, split="val")
    flipped = evaluate(run_dir, split="val", tta={"tta_flip": True})
    assert (plain.views, flipped.views) == ("the image only", "flip")
    assert Path(flipped.files["report"]).name == "report_val_views-flip.json"
    assert json.loads(Path(plain.files["report"]).read_text())["loss"] == plain.loss  # not overwritten
    run = load_run(run_dir)
    x = dataset_for(run)[0].val.x
    y = dataset_for(run)[0].val.y
    p = (run.probabilities(x) + run.probabilities(x[:, :, ::-1])) / 2
    assert flipped.loss == pytest.approx(metrics(y, p, run.classes)["loss"], rel=1e-5)
    assert flipped.loss != pytest.approx(plain.loss, rel=1e-5)
    for bad, message in ((["--tta-shift", "4"], "--tta-shift 4 is too large for 8x8 images (at most 3 px)"),
                         (["--tta-scales", "3"], "--tta-scales takes shares of the side in [0.25, 2]")):
        r = cli("evaluate", run_dir, "--split", "val", *bad)
        assert r.returncode != 0 and "Traceback" not in r.stderr and message in r.stderr.strip().splitlines()[-1]


def test_other_dataset_of_the_same_shape(digits, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    gray, rgb = tmp_path / "gray", tmp_path / "rgb"
    for i in range(60):  # 6 per class, 8x8 like the model's input
        img = Image.fromarray(np.round(d.images[i] * 255 / 16).astype(np.uint8))
        for root, im in ((gray, img), (rgb, img.convert("RGB"))):
            (root / str(d.target[i])).mkdir(parents=True, exist_ok=True)
            im.save(root / str(d.target[i]) / f"{i}.png")
    ev = evaluate(digits["run_dir"], dataset=str(gray), write=False)
    assert ev.classes == [str(i) for i in range(10)] and ev.n == sum(map(sum, ev.confusion_matrix)) > 0
    assert ev.accuracy > 0.8  # digits the model saw in training or test: read right
    with pytest.raises(CnnError, match=r"shape \(8, 8, 3\) but the model takes \(8, 8, 1\)"):
        evaluate(digits["run_dir"], dataset=str(rgb), write=False)
    if (Path(os.environ.get("CNN_DATA_DIR", "/nonexistent")) / "mnist").is_dir():
        # A registry data set keeps its own shape: 28x28 MNIST is not shrunk to pass for 8x8 digits.
        with pytest.raises(CnnError, match=r"shape \(28, 28, 1\) but the model takes \(8, 8, 1\)"):
            evaluate(digits["run_dir"], dataset="mnist", write=False)


def test_text_output_and_gate_passing(digits):
    r = CliRunner().invoke(app, ["evaluate", digits["run_dir"], "--min-accuracy", "0.5"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(ln.startswith("loss ") and "accuracy 0.9" in ln for ln in lines)
    for label in ("precision", "macro avg", "weighted avg", "true \\ pred"):
        assert any(label in ln for ln in lines), label
    acc_row = next(ln for ln in lines if ln.startswith("accuracy"))
    assert acc_row.split() == ["accuracy", f"{digits['test_accuracy']:.4f}", "359"]


def test_gate_failing_exit_code_and_json(digits):
    r = cli("evaluate", digits["run_dir"], "--min-accuracy", "0.999", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"accuracy {digits['test_accuracy']:.4f} is below --min-accuracy 0.999")
    out = json.loads(r.stdout)
    assert out["accuracy"] == pytest.approx(digits["test_accuracy"], abs=1e-9)
    assert {"loss", "report", "confusion_matrix"} <= set(out) and out["report"]["0"]["support"] == 36


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """A plain <dir>/<class>/ folder of 60 digits (6 per class), 8x8 like the model's input."""
    from sklearn.datasets import load_digits

    d, root = load_digits(), tmp_path_factory.mktemp("folder") / "mine"
    for i in range(60):
        (root / str(d.target[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(d.images[i] * 255 / 16).astype(np.uint8)).save(root / str(d.target[i]) / f"{i}.png")
    return root


def test_split_chooses_what_is_scored_and_says_how_many(digits, digit_folder):
    sizes = json.loads((Path(digits["run_dir"]) / "config.json").read_text())["data"]["sizes"]
    ev = evaluate(digits["run_dir"], split="all", write=False)
    assert ev.n == sum(sizes.values()) == 1797 and ev.sizes == sizes
    assert ev.scored == f"all 1,797 images (train {sizes['train']:,} + val {sizes['val']:,} + test 359)"
    assert evaluate(digits["run_dir"], write=False).scored.startswith("test split, 359 images (carved: 20%")
    # A plain folder given with --dataset is scored whole by default, not its carved fifth.
    ev = evaluate(digits["run_dir"], dataset=str(digit_folder), write=False)
    assert (ev.split, ev.n, ev.scored, ev.sizes) == ("all", 60, "all 60 images", {"all": 60})
    assert sum(map(sum, ev.confusion_matrix)) == 60
    assert [evaluate(digits["run_dir"], dataset=str(digit_folder), split=s, write=False).n
            for s in ("train", "test")] == [48, 12]
    with pytest.raises(CnnError, match="has no val split"):
        evaluate(digits["run_dir"], dataset=str(digit_folder), split="val", write=False)


def test_predictions_csv_has_a_row_per_image_and_a_mistakes_grid(digits, digit_folder, tmp_path):
    import csv

    csv_path = tmp_path / "preds.csv"
    ev = evaluate(digits["run_dir"], dataset=str(digit_folder), predictions=csv_path, write=False)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "split", "file", "true", "predicted", "probability", "correct"]
    assert [int(r["index"]) for r in rows] == list(range(60)) and {r["split"] for r in rows} == {"all"}
    # Every file once, in file order (the folder is one pool: its carve into train and test means nothing here).
    assert [r["file"] for r in rows] == sorted(str(p) for p in digit_folder.glob("*/*.png"))
    for r in rows:
        assert r["true"] == Path(r["file"]).parent.name  # the class folder each file is in
        assert r["correct"] == str(int(r["true"] == r["predicted"])) and 0 < float(r["probability"]) <= 1
        assert len(r["probability"].lstrip("0.").replace(".", "").rstrip("0")) <= 4  # 4 significant digits
    assert sum(int(r["correct"]) for r in rows) / 60 == pytest.approx(ev.accuracy)
    assert ev.files["mistakes"] == str(tmp_path / "preds_mistakes.png")
    with Image.open(ev.files["mistakes"]) as im:
        assert im.format == "PNG"
    # An array data set has no files: the index (the row of the split scored) identifies each image.
    ev = evaluate(digits["run_dir"], predictions=tmp_path / "own.csv", mistakes=tmp_path / "worst.jpg", write=False)
    with open(tmp_path / "own.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "split", "true", "predicted", "probability", "correct"] and len(rows) == 359
    assert {r["split"] for r in rows} == {"test"} and sum(r["correct"] == "0" for r in rows) == round(
        359 * (1 - ev.accuracy))
    with Image.open(tmp_path / "worst.jpg") as im:
        assert im.format == "JPEG"
    with pytest.raises(CnnError, match="name a .csv file"):
        evaluate(digits["run_dir"], predictions=tmp_path / "p.txt", write=False)


def test_cli_says_which_split_and_how_many(digits, digit_folder, tmp_path):
    r = CliRunner().invoke(app, ["evaluate", digits["run_dir"], "--dataset", str(digit_folder),
                                 "--predictions", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == f"{digits['run_dir']}: mine, all 60 images, best checkpoint, epoch " \
                                       f"{digits['best_epoch']}; views: the image only"
    assert str(tmp_path / "p.csv") in r.output and str(tmp_path / "p_mistakes.png") in r.output
