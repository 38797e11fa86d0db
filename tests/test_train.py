"""The training engine: learning, determinism, resume, multi-device, early stopping, NaN, outputs.

Most tests train on scikit-learn's `digits` (offline, 1,797 images) so they take seconds; the
MNIST test uses the real files in $CNN_DATA_DIR and is skipped without them.
"""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.console import Out
from cnncli.errors import CnnError
from cnncli.recipes import get_recipe
from cnncli.runs import checkpoint, read_history
from cnncli.train import resolve
from cnncli.train.engine import fit
from cnncli.train.progress import Progress


def quiet():
    return Progress(Out(json=True), quiet=True)


def train(tmp_path, **kw):
    opts = dict(arch="net2", dataset="digits", epochs=2, batch_size=32, out=str(tmp_path), seed=0) | kw
    return fit(resolve(opts), quiet())


def cli(*args, env=None, **kw):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "cnncli.cli", *args], capture_output=True, text=True, env=e, **kw)


def assert_one_line_error(r, message):
    """What a user sees for bad input: a non-zero exit and one line naming the problem, no traceback."""
    assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert message in r.stderr


def weights(run_dir, which="last"):
    _, arrays = checkpoint.load(Path(run_dir) / "checkpoints" / f"{which}.msgpack")
    return {k: v for k, v in arrays.items() if k.startswith("params/")}


def test_digits_learns_and_writes_the_run_directory(tmp_path):
    s = train(tmp_path, epochs=3)
    run = Path(s["run_dir"])
    for f in ("config.json", "history.csv", "metrics.json", "curves.png", "checkpoints/last.msgpack",
              "checkpoints/best.msgpack"):
        assert (run / f).is_file(), f
    # 10 classes: chance is 10%; net2 reaches >90% on digits in 3 epochs with these seeds.
    assert s["test_accuracy"] > 0.9
    with Image.open(run / "curves.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200
    hist = read_history(run)
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert all(r["images_per_s"] > 0 and r["lr"] == pytest.approx(1e-3) for r in hist)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["classes"] == [str(i) for i in range(10)] and cfg["extra"]["versions"]["jax"]
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] == s["test_accuracy"]


def test_same_seed_same_history_and_weights(tmp_path):
    a, b = train(tmp_path / "a"), train(tmp_path / "b")
    assert read_history(a["run_dir"])[-1]["train_loss"] == read_history(b["run_dir"])[-1]["train_loss"]
    wa, wb = weights(a["run_dir"]), weights(b["run_dir"])
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    wc = weights(train(tmp_path / "c", seed=1)["run_dir"])
    assert not any(np.array_equal(wa[k], wc[k]) for k in wa if wa[k].ndim > 1)


def test_nan_loss_stops_with_one_line(tmp_path):
    with pytest.raises(CnnError, match=r"NaN/inf at epoch 1, step \d+") as e:
        train(tmp_path, optimizer="sgd", lr=1e12, epochs=3)
    assert e.value.exit_code == 3


def test_early_stopping_restores_best_epoch(tmp_path):
    # With these seeds validation accuracy climbs for several epochs, then drops once (deterministic).
    s = train(tmp_path, arch="mlp", epochs=12, lr=0.01, early_stopping=1, batch_size=64)
    hist = read_history(s["run_dir"])
    best = max(hist, key=lambda r: r["val_accuracy"])
    assert s["stopped_early"] and len(hist) == best["epoch"] + 1 < 12  # patience 1: one epoch after the best
    assert s["best_epoch"] == best["epoch"] and hist[-1]["val_accuracy"] <= best["val_accuracy"]  # a tie is no improvement (as Keras)
    # The kept weights are the best epoch's: evaluating them gives the best val accuracy again.
    from cnncli.runs import load_run
    from cnncli.data import load_dataset

    run = load_run(s["run_dir"], "best")
    ds = load_dataset("digits", val_split=0.1, seed=0)
    acc = float((run.probabilities(ds.val.x).argmax(1) == ds.val.y).mean())
    assert acc == pytest.approx(best["val_accuracy"], abs=1e-6)


def test_transfer_learning_freezes_features(tmp_path):
    src = train(tmp_path / "src", epochs=1)
    s = train(tmp_path / "dst", epochs=1, init_from=src["run_dir"], freeze="features")
    a, b = weights(src["run_dir"], "best"), weights(s["run_dir"])
    moved = [k for k in a if not np.array_equal(a[k], b[k])]
    # Only the classifier head (the last dense layer: kernel and bias) moved; every feature layer stayed.
    assert len(moved) == 2 and len(a) > 2


def test_json_and_plain_output(tmp_path):
    r = cli("train", "--arch", "net2", "--dataset", "digits", "--epochs", "2", "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout holds exactly one JSON object
    for k in ("run_dir", "epochs", "best_epoch", "best_val_accuracy", "test_accuracy", "train_seconds", "images_per_s"):
        assert k in out
    # Not a terminal: one plain line per epoch, no escape codes, no progress bar.
    lines = [l for l in r.stderr.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "\x1b[" not in r.stderr
    # Without --json the summary goes to stdout; a missing number (no val split) prints as "-".
    r = cli("train", "--arch", "net2", "--dataset", "digits", "--epochs", "1", "--val-split", "0", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    done = next(l for l in r.stdout.splitlines() if l.startswith("done in"))
    assert re.search(r"best epoch 1, val accuracy -, test accuracy 0\.\d{4}$", done), done


def test_tta_views_and_their_average():
    # Each view against numpy's reflect padding, then the eval step's probabilities against the mean
    # of the model's softmax over those 10 views, computed here without the eval step.
    import jax
    from flax import nnx

    from cnncli.models import create_model
    from cnncli.runs.infer import make_eval_step, tta_views
    from cnncli.train.step import split

    x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    pad = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    expect = [x, pad[:, 0:8, 2:10], pad[:, 4:12, 2:10], pad[:, 2:10, 0:8], pad[:, 2:10, 4:12]]
    expect += [e[:, :, ::-1] for e in expect]
    views = tta_views(x, flip=True, shift=2)
    assert len(views) == 10 and all(np.array_equal(v, e) for v, e in zip(views, expect))
    assert len(tta_views(x, flip=False, shift=0)) == 1 and len(tta_views(x, flip=True, shift=0)) == 2

    _, geval, params, rest = split(create_model("net2", (8, 8, 1), 10, seed=0))
    model = nnx.merge(geval, params, rest)
    want = np.mean([jax.nn.softmax(model(e.astype(np.float32) / 255.0)) for e in expect], axis=0)
    y = np.arange(4, dtype=np.int32)
    step = make_eval_step(geval, binary=False, mean=(0.0,), std=(1.0,), tta_flip=True, tta_shift=2)
    loss_sum, _, probs = step(params, rest, x, y, np.ones(4, np.float32))
    # float32 softmax of the same logits, summed in another order: equal to ~1e-7; 1e-5 leaves room.
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert float(loss_sum) == pytest.approx(-np.log(want[np.arange(4), y]).sum(), rel=1e-5)


def test_tta_shift_reaches_evaluate_and_checks_its_size(tmp_path):
    from cnncli.evaluate import evaluate

    s = train(tmp_path, epochs=1, tta_flip=True, tta_shift=1)
    # `cnn evaluate` rebuilds the same views from config.json, so it gives training's test accuracy.
    assert evaluate(s["run_dir"], write=False).accuracy == s["test_accuracy"]
    with pytest.raises(CnnError, match="--tta-shift 4 is too large for 8x8 images"):
        train(tmp_path, epochs=1, tta_shift=4)
    r = cli("train", "--tta-shift", "-1", "--out", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--tta-shift" in r.stderr


@pytest.mark.parametrize("op, pad", [("crop", 4), ("crop:2", 2)])
def test_crop_moves_each_image_by_at_most_its_padding(op, pad):
    import jax
    import jax.numpy as jnp

    from cnncli.train.augment import augment

    # Every pixel holds its own (row, column) code, so each output image names the offset it was cut at.
    h = w = 12
    codes = (np.arange(h)[:, None] * 100 + np.arange(w)[None, :]).astype(np.float32)
    x = jnp.broadcast_to(jnp.asarray(codes)[None, :, :, None], (256, h, w, 1))
    out = np.asarray(augment(jax.random.key(0), x, (op,)))
    # The centre pixel is never reflected for pads below 6, so its code is the shift itself.
    centre = out[:, 6, 6, 0].astype(int)
    dy, dx = centre // 100 - 6, centre % 100 - 6
    assert max(abs(dy).max(), abs(dx).max()) == pad  # 256 draws of 2*pad+1 values: every extreme seen
    padded = np.pad(codes, pad, mode="reflect")
    for img, a, b in zip(out[:, :, :, 0], dy, dx):
        np.testing.assert_array_equal(img, padded[pad + a : pad + a + h, pad + b : pad + b + w])


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    import jax
    import jax.numpy as jnp

    from cnncli.train.augment import alternating_flip

    x = jax.random.uniform(jax.random.key(1), (512, 4, 5, 1))
    idx = jnp.arange(1000, 1512)
    views = [np.asarray(alternating_flip(jax.random.key(0), x, idx, e)) for e in range(3)]
    mirrored = [np.all(v == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3)) for v in views]
    kept = [np.all(v == np.asarray(x), axis=(1, 2, 3)) for v in views]
    assert all((m ^ k).all() for m, k in zip(mirrored, kept))  # each image is either mirrored or not
    assert (mirrored[0] ^ mirrored[1]).all() and (mirrored[0] == mirrored[2]).all()
    assert 192 < mirrored[0].sum() < 320  # a fair coin per image: 256 +- 5.6 sigma
    again = np.asarray(alternating_flip(jax.random.key(0), x[::-1], idx[::-1], 0))[::-1]
    np.testing.assert_array_equal(again, views[0])  # the coin follows the image, not its place in the batch


def test_both_feeding_paths_give_the_same_run(tmp_path, monkeypatch):
    from cnncli.train import feed

    # altflip needs each image's index: the host-gathered path must pass the same ones as the resident path.
    a = weights(train(tmp_path, epochs=1, augment="altflip,crop:1", name="resident")["run_dir"])
    monkeypatch.setattr(feed, "RESIDENT_BYTES", 0)
    b = weights(train(tmp_path, epochs=1, augment="altflip,crop:1", name="gathered")["run_dir"])
    c = weights(train(tmp_path, epochs=1, augment="flip,crop:1", name="random-flip")["run_dir"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_airbench_options_from_the_command_line(tmp_path):
    r = cli("train", "--arch", "net2", "--dataset", "digits", "--epochs", "1", "--lookahead", "--augment",
            "altflip", "--bn-bias-lr", "2", "--weight-decay", "1e-4", "--decay-biases", "--schedule", "onecycle",
            "--lr-start", "0.2", "--lr-end", "0.07", "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    run = Path(json.loads(r.stdout)["run_dir"])
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["lookahead"], cfg["augment"], cfg["bn_bias_lr"]) == (True, "altflip", 2.0)
    assert (cfg["decay_biases"], cfg["lr_start"], cfg["lr_end"]) == (True, 0.2, 0.07)
    # The schedule reached the step: from the peak (Adam's 1e-3) at step n // 4 down to 0.07 x the peak
    # at step n; the history logs the rate of the last step taken, n - 1.
    n = cfg["extra"]["steps_per_epoch"]
    up = n // 4
    assert read_history(run)[-1]["lr"] == pytest.approx(1e-3 * (1 - 0.93 * (n - 1 - up) / (n - up)), rel=1e-5)
    for bad, message in ((["--bn-bias-lr", "0"], "--bn-bias-lr must be a positive"),
                         (["--augment", "altflip:2"], "only crop takes a size"),
                         (["--lr-end", "2"], "fractions of the peak learning rate")):
        assert_one_line_error(cli("train", *bad, "--out", str(tmp_path)), message)


def test_a_new_machine_times_the_step_with_the_runs_own_optimizer(tmp_path, monkeypatch):
    """With the tuner on and nothing cached, the step is timed before training (oneDNN or not, and
    --precision auto) with the run's optimizer: airbench94's --bn-bias-lr masks the BatchNorm shifts,
    and the timing optimizer once lacked that mask (a traceback on every new machine)."""
    from cnncli import kernels, tuner
    from cnncli.runs import read_config

    monkeypatch.setenv("CNN_TUNE", "1")
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "cache"))
    tuner.reset()
    try:
        s = train(tmp_path, epochs=1, arch="net2", dataset="digits", bn_bias_lr=64.0,
                  lookahead=True, weight_decay=5e-4, decay_biases=True, precision="auto", limit=256)
        assert np.isfinite(read_history(s["run_dir"])[-1]["train_loss"])
        if kernels.available():  # the step was timed both ways, not read from a cache
            key = ("net2", (8, 8, 1), 32, 10, (), read_config(s["run_dir"])["precision"])
            assert set(tuner.record("kernels_step", key)["ms"]) == {"with", "without"}
    finally:
        tuner.reset()


def test_resume_takes_data_derived_layers_from_the_checkpoint(tmp_path, monkeypatch):
    from cnncli.runs import read_config
    from cnncli.train import TrainConfig, prepare

    calls = []
    real = prepare._init_from_data
    monkeypatch.setattr(prepare, "_init_from_data", lambda *a: calls.append(a) or real(*a))
    s = train(tmp_path, epochs=1)
    assert len(calls) == 1  # a fresh run sets them from the data
    cfg = TrainConfig.from_dict(read_config(s["run_dir"]))
    cfg.epochs = 2
    fit(cfg, quiet(), resume=Path(s["run_dir"]))
    assert len(calls) == 1  # the resumed one does not redo it: its checkpoint overwrites them anyway


def test_crop_size_is_checked(tmp_path):
    resolve({"augment": "crop:3,flip"}).validate()
    for bad in ("crop:0", "crop:x", "flip:2"):
        with pytest.raises(CnnError, match="only crop takes a size"):
            resolve({"augment": bad}).validate()
    with pytest.raises(CnnError, match="crop pads 8 px, too many for 8x8 images"):
        train(tmp_path, epochs=1, augment="crop:8")
    assert_one_line_error(cli("train", "--augment", "crop:0", "--out", str(tmp_path)), "only crop takes a size")


def test_user_errors_are_one_line(tmp_path):
    r = cli("train", "--arch", "nope", "--dataset", "digits", "--out", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    r = cli("train", "--optimizer", "adamx", "--out", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "adamx" in r.stderr


def test_interrupt_and_resume_give_identical_weights(tmp_path, data_dir):
    args = ["train", "--arch", "net2", "--dataset", "mnist", "--limit", "3000", "--epochs", "3",
            "--batch-size", "32", "--seed", "3"]
    full = cli(*args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    p = subprocess.Popen([sys.executable, "-m", "cnncli.cli", *args, "--out", str(tmp_path / "cut")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hist = tmp_path / "cut" / "net2-mnist" / "history.csv"
    deadline = time.time() + 300
    while not hist.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err
    assert "cnn train --resume" in err
    meta, _ = checkpoint.load(tmp_path / "cut" / "net2-mnist" / "checkpoints" / "last.msgpack")
    assert meta["loop"]["epoch"] == 1 and meta["loop"]["step_in_epoch"] > 0  # it stopped mid-epoch
    r = cli("train", "--resume", str(tmp_path / "cut" / "net2-mnist"))
    assert r.returncode == 0, r.stderr
    a, b = weights(tmp_path / "full" / "net2-mnist"), weights(tmp_path / "cut" / "net2-mnist")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    timing = ("seconds", "elapsed_seconds", "images_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in timing} for r in h]  # noqa: E731
    assert strip(read_history(tmp_path / "full" / "net2-mnist")) == strip(read_history(tmp_path / "cut" / "net2-mnist"))


def test_two_devices_match_one(tmp_path):
    args = ["train", "--arch", "net2", "--dataset", "digits", "--epochs", "2", "--batch-size", "32", "--json"]
    one = cli(*args, "--out", str(tmp_path / "one"))
    two = cli(*args, "--out", str(tmp_path / "two"), env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    j1, j2 = json.loads(one.stdout), json.loads(two.stdout)
    cfg2 = json.loads((Path(j2["run_dir"]) / "config.json").read_text())
    assert len(cfg2["extra"]["devices"]) == 2
    h1, h2 = read_history(j1["run_dir"]), read_history(j2["run_dir"])
    # Same maths, other summation order across devices: float32 rounding only. 1e-3 relative on the
    # loss after 90 steps is ~100x the drift measured here, and far below any real difference.
    for r1, r2 in zip(h1, h2):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-3)
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-3)
    assert abs(j1["test_accuracy"] - j2["test_accuracy"]) <= 2 / 360  # at most 2 of 360 test images differ


def test_net1_on_real_mnist_learns(tmp_path, data_dir):
    s = train(tmp_path, arch="net1", dataset="mnist", limit=4000, epochs=1, batch_size=64)
    assert s["test_accuracy"] > 0.85  # chance is 0.10


def test_photo_defaults_of_an_arch_never_mirror_digits():
    """resnet_cifar's defaults flip (augmentation and test-time averaging): right for CIFAR, wrong for digits."""
    cifar = resolve({"arch": "resnet_cifar", "dataset": "cifar10"})
    assert cifar.tta_flip and "flip" in cifar.augment
    for dataset in ("mnist", "digits"):
        cfg = resolve({"arch": "resnet_cifar", "dataset": dataset})
        assert not cfg.tta_flip and cfg.augment == "crop"
    assert not resolve({"recipe": "mnist-best"}, get_recipe("mnist-best")["options"]).tta_flip
    assert resolve({"arch": "resnet_cifar", "dataset": "mnist", "tta_flip": True}).tta_flip  # asked for: kept


def test_time_budget_picks_the_epochs_that_fit(monkeypatch):
    from types import SimpleNamespace

    from cnncli.train import budget as planner
    from cnncli.train.feed import mesh

    # A fake clock that only the step moves: compiling costs 5 s, then steps take 1 s, but for one
    # hiccup of 9 s that the median ignores.
    clock, calls = [0.0], [0]
    monkeypatch.setattr(planner.time, "perf_counter", lambda: clock[0])

    def step(state, metrics, *batch):
        calls[0] += 1
        clock[0] += {1: 5.0, 10: 9.0}.get(calls[0], 1.0)
        return state, metrics

    feeder = SimpleNamespace(mesh=mesh(), y=np.zeros(200), epoch=lambda order, bs: ((None,) for _ in range(20)))

    def budget(minutes, epochs):
        clock[0], calls[0] = 0.0, 0
        return planner.epochs_within_budget(resolve(dict(time_budget=minutes, epochs=epochs)), step, {}, feeder, 10, 20)

    # 20 s an epoch (20 steps of 1 s: the median of 8 groups of 2, one of them 10 s); 7 s to compile and
    # warm up, 31 s spent in all (19 steps); the real run's first steps (7 s) again:
    # (0.95 x 120 - 31 - 7) // 20 = 3 epochs in two minutes.
    epochs, spent, note = budget(2, 10)
    assert (epochs, spent) == (3, 31.0) and "~20 s per epoch here, so 3 epoch(s)" in note
    epochs, _, note = budget(2, 2)
    assert epochs == 2 and "fits 3, capped by --epochs" in note and "recipe" not in note
    # A recipe's run that fits fewer epochs than the recipe plans says so before it trains.
    clock[0], calls[0] = 0.0, 0
    cfg = resolve(dict(recipe="mnist-best", time_budget=2, epochs=10))
    note = planner.epochs_within_budget(cfg, step, {}, feeder, 10, 20)[2]
    assert "so 3 epoch(s); fewer than the 10 recipe mnist-best plans" in note
    # With --epochs overriding the recipe's 10, the recipe planned neither number: the note says whose it is.
    clock[0], calls[0] = 0.0, 0
    cfg = resolve(dict(recipe="mnist-best", time_budget=2, epochs=12))
    note = planner.epochs_within_budget(cfg, step, {}, feeder, 10, 20)[2]
    assert "so 3 epoch(s); fewer than the 12 --epochs asks" in note and "recipe" not in note
    with pytest.raises(CnnError, match="does not fit one epoch here"):
        budget(1, 10)
    # An epoch is its steps and its validation pass: timing the pass (4 s on the clock) finds 10 s an
    # epoch, so (0.95 x 120 - 35 - 7) // 30 = 2 epochs.
    clock[0], calls[0] = 0.0, 0

    def validate():
        clock[0] += 4.0
        return 10.0

    epochs, spent, note = planner.epochs_within_budget(resolve(dict(time_budget=2, epochs=10)), step, {}, feeder, 10,
                                                       20, validate)
    assert (epochs, spent) == (2, 35.0) and "~30 s per epoch here (~10 s of it validating), so 2 epoch(s)" in note


def test_validation_seconds_scales_the_timed_batches_to_the_split(monkeypatch):
    from cnncli.train import budget as planner
    from cnncli.train.feed import mesh

    clock, seen = [0.0], []
    monkeypatch.setattr(planner.time, "perf_counter", lambda: clock[0])

    def eval_step(params, rest, x, y, w):  # 1 s a batch on the clock
        seen.append(int(np.asarray(w).sum()))
        clock[0] += 1.0
        return np.zeros(2)

    x, y = np.zeros((1000, 2, 2, 1), np.uint8), np.zeros(1000, np.int32)
    # One batch of 256 compiles, two are timed (2 s for 512 images): 1,000 images take ~3.9 s.
    assert planner.validation_seconds(eval_step, {}, {}, mesh(), x, y, 256) == pytest.approx(2.0 * 1000 / 512)
    assert seen == [256, 256, 256]
    assert planner.validation_seconds(eval_step, {}, {}, mesh(), x[:0], y[:0], 256) == 0.0


def test_time_budget_holds_when_epochs_run_slower_than_planned(tmp_path, monkeypatch):
    """The budget planned 4 epochs, but they take longer than timed: the run stops when another epoch
    would overrun the budget, tests its best epoch, and its checkpoint says it is finished."""
    from cnncli.train import prepare as P

    monkeypatch.setattr(P, "epochs_within_budget", lambda cfg, *a: (4, 0.0, "planned 4 epochs"))
    notes = []
    progress = quiet()
    progress.note = notes.append
    budget = 1e-4  # minutes: any real epoch overruns it
    s = fit(resolve(dict(arch="net2", dataset="digits", epochs=6, time_budget=budget, batch_size=32,
                         out=str(tmp_path), seed=0)), progress)
    assert s["epochs"] == 1 and s["stopped_early"] and s["test_accuracy"] is not None
    assert any("stopping after epoch 1 of 4" in n for n in notes), notes
    meta, _ = checkpoint.load(Path(s["run_dir"]) / "checkpoints" / "last.msgpack")
    assert meta["loop"]["out_of_time"] is True
    r = cli("train", "--resume", s["run_dir"])
    assert_one_line_error(r, "already finished (its time budget ended it after epoch 1)")


def test_time_budget_from_the_command_line(tmp_path):
    r = cli("train", "--arch", "net2", "--dataset", "digits", "--epochs", "2", "--batch-size", "16",
            "--time-budget", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    # ~80 steps an epoch, so the step is timed; a digits epoch takes a few seconds: the cap of 2 applies.
    assert re.search(r"time budget 2 min: ~\d+ s per epoch here, so 2 epoch\(s\) \(fits \d+, capped", r.stdout)
    run = Path(re.search(r"run directory: (\S+)", r.stdout)[1])
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["time_budget"], cfg["epochs"], len(read_history(run))) == (2.0, 2, 2)
    r = cli("train", "--dataset", "digits", "--batch-size", "16", "--time-budget", "0.01", "--out", str(tmp_path))
    assert_one_line_error(r, "does not fit one epoch here")
    assert_one_line_error(cli("train", "--time-budget", "-1", "--out", str(tmp_path)), "--time-budget is in minutes")
