"""What runs write for other tools (metrics.jsonl, TensorBoard events, CSV tables) and what the
commands print matching what they do (predict --top-k, explain --out's format).

The digits run is the one test_evaluate.py trains (`trained_run`: once per session).
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.tables import csv_text, sig
from cnncli.runs import read_history
from cnncli.train.logs import JSONL_FIELDS, EpochLog, read_jsonl
from test_evaluate import trained_run


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return trained_run(tmp_path_factory, "digits", dataset="digits")


def scalars(run_dir) -> dict:
    """{tag: [(step, value)]} as TensorBoard itself reads the run directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_metrics_jsonl_has_one_line_per_epoch_matching_the_history(digits):
    run_dir = Path(digits["run_dir"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(ln) for ln in lines]
    hist = read_history(run_dir)
    assert len(rows) == len(hist) == 2
    for row, h in zip(rows, hist):
        assert list(row) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_s"]
        assert row == {k: (int(h[src]) if k == "epoch" else h[src]) for k, src in JSONL_FIELDS.items()}
        assert 0 < row["accuracy"] <= 1 and 0 < row["val_accuracy"] <= 1 and row["loss"] > 0 and row["lr"] > 0
        assert row["seconds"] > 0 and row["images_per_s"] > 0


def test_tensorboard_reads_back_every_epoch(digits):
    run_dir = Path(digits["run_dir"])
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    got = scalars(run_dir)
    assert set(got) == {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr",
                        "speed/images_per_s", "speed/seconds_per_epoch"}
    hist = read_history(run_dir)
    for tag, key in (("loss/train", "train_loss"), ("accuracy/val", "val_accuracy"), ("lr", "lr")):
        assert [s for s, _ in got[tag]] == [1, 2]
        assert [v for _, v in got[tag]] == pytest.approx([h[key] for h in hist], rel=1e-6)  # float32 in the file


def test_resumed_log_replaces_the_epochs_it_trains_again(tmp_path):
    def row(epoch, loss):
        return {"epoch": epoch, "train_loss": loss, "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None,
                "lr": 1e-3, "seconds": 1.0, "images_per_s": 100.0}

    with EpochLog(tmp_path, 1) as log:  # epochs 1 and 2 logged, then the run dies before epoch 2's checkpoint
        log.write([row(1, 1.0)])
        log.write([row(1, 1.0), row(2, 0.5)])
    with EpochLog(tmp_path, 2) as log:  # --resume: epoch 2 again, then 3
        log.write([row(1, 1.0), row(2, 0.7)])
        log.write([row(1, 1.0), row(2, 0.7), row(3, 0.6)])
    assert scalars(tmp_path)["loss/train"] == [(1, 1.0), (2, pytest.approx(0.7)), (3, pytest.approx(0.6))]
    assert [r["loss"] for r in read_jsonl(tmp_path)] == [1.0, 0.7, 0.6]
    assert "val_loss" not in scalars(tmp_path)  # no validation split: no empty val curve


def test_curves_png_is_drawn(digits):
    with Image.open(Path(digits["run_dir"]) / "curves.png") as im:
        assert im.format == "PNG" and im.size[0] > 1200  # three panels: accuracy, loss, learning rate


def test_tables_round_to_four_significant_digits(tmp_path):
    assert [sig(v) for v in (0.9861111111111112, 1234.5678, np.float32(0.1), 3.333e-8 / 3)] == [
        0.9861, 1235.0, 0.1, 1.111e-08]
    assert [sig(v) for v in (3, np.int64(7), True, None, "x", float("nan"))][:5] == [3, 7, True, None, "x"]
    text = csv_text(["a", "b", "c"], [{"a": 2 / 3, "b": None, "c": "s"}, {"a": np.float64(10 / 7), "b": 12}])
    assert text == "a,b,c\n0.6667,,s\n1.429,12,\n"


def test_comparison_csv_carries_rounded_figures(tmp_path):
    from cnncli.comparison import COLUMNS, write_outputs

    run = {"dataset": "digits", "variant": "optimizer=adam", "seed": 0, "parameters": 1234,
           "best_val_accuracy": 0.9791666666666666, "final_val_accuracy": 0.9722222222222222, "best_epoch": 3,
           "epochs_to_99": 2, "lowest_val_loss_epoch": 3, "seconds_per_epoch": 0.21249999999999997,
           "test_accuracy": 0.9610027855153204, "epochs": 3, "run_dir": "r"}
    curve = {"epoch": [1, 2], "train_accuracy": [0.5, 0.9], "val_accuracy": [0.6, 0.9], "train_loss": [1.0, 0.3],
             "val_loss": [0.9, 0.35]}
    write_outputs(tmp_path, {"runs": [run], "curves": {"digits": {"optimizer=adam": curve}}, "name": "t",
                             "seeds": [0]})
    with open(tmp_path / "comparison.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert [row[k] for k, _ in COLUMNS] == ["1234", "0.9792", "0.9722", "3", "2", "3", "0.2125", "0.961"]


def digit_png(path: Path, index: int = 0) -> Path:
    from sklearn.datasets import load_digits

    Image.fromarray(np.round(load_digits().images[index] * 255 / 16).astype(np.uint8)).save(path)
    return path


def test_predict_top_k_beyond_the_classes_shows_all_and_says_so(digits, tmp_path, run_cnn):
    img = digit_png(tmp_path / "d.png")
    code, out, err = run_cnn("predict", img, "--model", digits["run_dir"], "--top-k", "50")
    assert code in (0, None)
    assert err == "note: the model has 10 classes; showing all 10, not top 50\n"
    header, row = out.strip().splitlines()
    assert "top 10" in header and "top 50" not in header
    assert len(row.split(",")) == 10  # ten "class p" pairs
    code, out, _ = run_cnn("predict", img, "--model", digits["run_dir"], "--top-k", "50", "--json")
    assert len(json.loads(out)[0]["top_k"]) == 10


def test_explain_writes_the_format_its_extension_names(digits, tmp_path, run_cnn):
    img = digit_png(tmp_path / "d.png")
    for name, fmt in (("x.jpg", "JPEG"), ("x.webp", "WEBP"), ("x.PNG", "PNG")):
        code, out, _ = run_cnn("explain", img, "--model", digits["run_dir"], "--out", tmp_path / name, "--json")
        assert code in (0, None) and json.loads(out)["png"] == str(tmp_path / name)
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt
    code, _, _ = run_cnn("explain", img, "--model", digits["run_dir"], "--out", tmp_path / "x.pdf")
    assert code in (0, None) and (tmp_path / "x.pdf").read_bytes()[:5] == b"%PDF-"
    for bad in ("x.gif", "noext"):
        code, out, err = run_cnn("explain", img, "--model", digits["run_dir"], "--out", tmp_path / bad)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and not (tmp_path / bad).exists()
        assert err.startswith(f"error: --out {tmp_path / bad}: cannot write a figure as ") and ".png" in err


def test_saliency_lands_on_the_part_of_the_file_the_model_saw(tmp_path):
    from cnncli.explain import onto_file
    from cnncli.predict import _centre_digit

    # A dark bar drawn on white paper at rows 40-160, cols 90-110 of a 200x300 file.
    paper = np.full((200, 300), 255, np.uint8)
    paper[40:160, 90:110] = 0
    digit, frame = _centre_digit(255 - paper, (28, 28), 20 / 28)
    top, left, ph, pw, y0, x0, y1, x1 = frame
    assert (y0, x0, y1, x1) == (40, 90, 160, 110) and ph == 20 and digit[top:top + ph, left:left + pw].max() > 0
    sal = np.zeros((28, 28), np.float32)
    sal[top:top + ph, left:left + pw] = 1.0  # the model cares about the bar and nothing else
    on_file = onto_file(sal, frame, paper.shape, (100, 150))  # drawn at half size
    assert on_file[20:80, 45:55].min() > 0.5 and on_file[:15].max() == 0 and on_file[:, 60:].max() == 0
    # No frame: the whole file was resized to the input, so the map is resized back over all of it.
    assert onto_file(np.ones((8, 8), np.float32), None, (64, 32), (64, 32)).min() == pytest.approx(1.0)


def test_explain_shows_the_file_as_drawn_and_the_map_over_it_in_grey(digits, tmp_path, monkeypatch):
    import cnncli.plots as plots
    from cnncli.explain import explain
    from cnncli.runs import load_run

    drawn = np.full((60, 40, 3), 250, np.uint8)
    drawn[10:50, 18:24] = (20, 40, 200)  # a blue "1" on paper
    Image.fromarray(drawn).save(tmp_path / "one.png")
    seen = {}
    real = plots.saliency
    monkeypatch.setattr(plots, "saliency", lambda *a, **k: seen.update(args=a) or real(*a, **k))
    r = explain(load_run(digits["run_dir"]), tmp_path / "one.png", str(tmp_path / "s.png"))
    shown, on_file, model_input = seen["args"][:3]
    assert np.array_equal(shown, drawn)  # as drawn: colours and size kept, nothing binarised
    assert on_file.shape == (60, 40) and on_file[10:50, 18:24].mean() > on_file[:5].mean()
    assert model_input.shape == (8, 8, 1) and r["note"].endswith("inverted, centred")  # after predict's "unsure, "
    with Image.open(tmp_path / "s.png") as im:
        assert im.format == "PNG"


def test_slow_work_prints_plain_progress_lines_off_a_terminal(digits, tmp_path, monkeypatch, capsys):
    import cnncli.console as console
    from cnncli.evaluate import evaluate
    from cnncli.predict import predict_files
    from cnncli.runs import load_run

    with console.task_progress("quick", 3, "files") as advance:  # done within PLAIN_EVERY: silent
        for _ in range(3):
            advance()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(console, "PLAIN_EVERY", 0.0)  # as if every step took longer than that
    evaluate(digits["run_dir"], write=False)
    err = capsys.readouterr().err.splitlines()
    assert [ln.split(",")[0] for ln in err] == ["scoring digits test: 256/359 images", "scoring digits test: 359/359 images"]
    files = [digit_png(tmp_path / f"{i}.png", i) for i in range(3)]
    predict_files(load_run(digits["run_dir"]), files)
    assert [ln.split(",")[0] for ln in capsys.readouterr().err.splitlines()] == [
        f"classifying: {i}/3 files" for i in (1, 2, 3)]
    assert capsys.readouterr().out == ""  # stdout stays clean for tables and --json


def test_bench_reports_each_timed_group_and_compare_the_time_left(monkeypatch):
    import cnncli.compare as compare
    from cnncli import bench

    done = []
    blocks = {name: (lambda steps: 0.1) for name in ("cnn", "torch")}
    bench.interleave(blocks, repeats=3, steps=2, progress=lambda: done.append(1))
    assert len(done) == 6  # the bar's total: repeats x frameworks
    monkeypatch.setattr(compare.time, "monotonic", lambda: 100.0 + 90.0)  # 2 runs took 90 s in all
    assert (compare._time_left(100.0, 0, 4), compare._time_left(100.0, 2, 4), compare._time_left(100.0, 2, 3)) == (
        "", ", about 1.5 min left", ", about 45 s left")
