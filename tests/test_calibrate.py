"""Calibration: the temperature fit, the unsure rule, and `cnn predict`'s unsure note in table, JSON and CSV.

The digits run is shared with test_evaluate.py and test_predict.py (`trained_run`); a second one
without a validation split checks the "no calibration" path.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli import calibrate
from cnncli.evaluate import dataset_for
from cnncli.predict import csv_text, predict_files
from cnncli.runs import load_run
from test_evaluate import trained_run


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return trained_run(tmp_path_factory, "digits", dataset="digits")


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_fit_recovers_the_temperature_labels_were_drawn_with():
    # Labels drawn from softmax(z / 2): the model's softmax(z) is overconfident by exactly T = 2.
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (20000, 5))
    y = np.array([rng.choice(5, p=p) for p in softmax(z / 2)])
    t = calibrate.fit_temperature(softmax(z), y)
    assert t == pytest.approx(2.0, rel=0.05)
    cal = calibrate.apply(softmax(z), t)
    assert (cal.argmax(-1) == z.argmax(-1)).all()  # the predicted class never changes
    assert np.allclose(cal, softmax(z / t), atol=1e-6)
    assert calibrate.nll(cal, y) < calibrate.nll(softmax(z), y)
    assert calibrate.apply(softmax(z), 1.0) is not None and np.array_equal(calibrate.apply(softmax(z), 1.0), softmax(z))


def test_binary_head_temperature_divides_the_sigmoid_logit():
    z = np.array([-3.0, -0.5, 0.2, 4.0])
    p1 = 1 / (1 + np.exp(-z))
    got = calibrate.apply(np.stack([1 - p1, p1], -1), 2.5)
    assert np.allclose(got[:, 1], 1 / (1 + np.exp(-z / 2.5)), atol=1e-6)


def test_unsure_threshold_is_where_validation_accuracy_reaches_the_target():
    # Below 0.8: right half of the time; from 0.8 up: always right. The threshold is 0.8.
    top = np.array([0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99])
    correct = np.array([1, 0, 1, 0, 0, 1, 1, 1, 1, 1], bool)
    assert calibrate.unsure_threshold(top, correct, 0.9) == 0.8
    assert calibrate.unsure_threshold(top, np.ones(10, bool), 0.9) == 0.55  # always right: nothing unsure
    assert math.isinf(calibrate.unsure_threshold(top, np.zeros(10, bool), 0.9))  # never: everything unsure
    rec = calibrate.calibrate(np.stack([1 - top, top], -1), np.where(correct, 1, 0))
    assert rec["unsure_below"] is not None and calibrate.is_unsure(rec["unsure_below"] - 1e-6, rec)
    assert not calibrate.is_unsure(rec["unsure_below"], rec)
    assert calibrate.is_unsure(0.3, calibrate.NO_VAL) is None and calibrate.is_unsure(0.3, None) is None


def test_training_writes_the_validation_fit(digits):
    run = load_run(digits["run_dir"])
    rec = run.calibration
    assert rec == json.loads((Path(digits["run_dir"]) / "calibration.json").read_text())
    assert (rec["temperature"], rec["unsure_below"]) == (digits["temperature"], digits["unsure_below"])
    ds, _ = dataset_for(run)
    probs = run.probabilities(ds.val.x)
    assert rec["val_images"] == len(ds.val.y)
    # Fitted on the validation split (never on test): the same fit from the same predictions.
    assert rec["temperature"] == pytest.approx(calibrate.fit_temperature(probs, ds.val.y), rel=1e-3)
    assert rec["val_nll_calibrated"] <= rec["val_nll"]


def test_predict_says_unsure_in_table_json_and_csv(digits, tmp_path, run_cnn):
    run = load_run(digits["run_dir"])
    ds, _ = dataset_for(run)
    files = []
    for i in range(60):  # test digits as 8x8 files: predict leaves data set images as they are
        files.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(ds.test.x[i, ..., 0]).save(files[-1])
    results = predict_files(run, files, top_k=2)
    cal = calibrate.apply(run.probabilities(ds.test.x[:60]), run.calibration["temperature"])
    below = run.calibration["unsure_below"]
    for r, p in zip(results, cal):
        assert r["probability"] == pytest.approx(float(p.max()), rel=1e-5)
        assert r["unsure"] == bool(p.max() < below) and (r["note"] == "unsure") == r["unsure"]
    assert 0 < sum(r["unsure"] for r in results) < len(results)  # both kinds among these 60
    unsure = {Path(r["file"]).name for r in results if r["unsure"]}
    rows = csv_text(results).splitlines()[1:]
    assert {Path(row.split(",")[0]).name for row in rows if row.split(",")[4] == "unsure"} == unsure
    code, out, err = run_cnn("predict", tmp_path, "--model", digits["run_dir"], "--json")
    assert code == 0 and [r["unsure"] for r in json.loads(out)] == [r["unsure"] for r in results]
    code, out, err = run_cnn("predict", tmp_path, "--model", digits["run_dir"])
    lines = {ln.split()[0]: ln for ln in out.splitlines()[1:] if ln.strip()}
    assert {Path(f).name for f, ln in lines.items() if ln.rstrip().endswith("unsure")} == unsure
    assert "note:" not in err


def test_run_without_validation_split_is_uncalibrated_and_says_so_once(tmp_path_factory, tmp_path, run_cnn):
    s = trained_run(tmp_path_factory, "digits-noval", dataset="digits", val_split=0.0, epochs=1)
    run = load_run(s["run_dir"])
    assert run.calibration["temperature"] == 1.0 and run.calibration["unsure_below"] is None
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    code, out, err = run_cnn("predict", tmp_path, "--model", s["run_dir"], "--csv")
    assert code == 0 and err.count("no validation split") == 1 and "unsure" not in out.split("\n", 1)[1]
    assert all(r["unsure"] is None for r in predict_files(run, sorted(tmp_path.glob("*.png"))))


def test_explain_prints_the_calibrated_probability_predict_prints(digits, tmp_path, run_cnn):
    run = load_run(digits["run_dir"])
    ds, _ = dataset_for(run)
    raw = run.probabilities(ds.test.x[:20]).max(-1)
    cal = calibrate.apply(run.probabilities(ds.test.x[:20]), run.calibration["temperature"]).max(-1)
    i = int(np.argmax(np.abs(cal - raw)))  # the image where calibration moves the probability most
    assert abs(cal[i] - raw[i]) > 1e-3  # else this test could not tell the two apart
    img = tmp_path / "d.png"
    Image.fromarray(ds.test.x[i, ..., 0]).save(img)
    _, out, _ = run_cnn("predict", img, "--model", digits["run_dir"], "--json")
    said = json.loads(out)[0]
    _, out, _ = run_cnn("explain", img, "--model", digits["run_dir"], "--json", "--out", tmp_path / "s.png")
    shown = json.loads(out)
    assert (shown["class"], shown["probability"], shown["unsure"]) == (said["class"], said["probability"], said["unsure"])
    assert shown["probability"] == pytest.approx(float(cal[i]), rel=1e-5)
    _, table, _ = run_cnn("predict", img, "--model", digits["run_dir"])
    _, line, _ = run_cnn("explain", img, "--model", digits["run_dir"], "--out", tmp_path / "s.png")
    assert f"{said['probability']:.4f}" in table.splitlines()[1] and f" {said['probability']:.4f}" in line.splitlines()[0]
