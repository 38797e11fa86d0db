"""`cnn compare` and `cnn compare-pooling`: planning, the numbers, the conclusion, the real commands.

The numbers in a comparison's table must be recomputable from the runs' own history.csv and
metrics.json; the end-to-end tests recompute them here independently of `cnncli.compare`.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnncli.compare import Plan, check_plan, grid, parse_vary, pooling_variants, run
from cnncli.comparison import conclusion, run_stats, table_rows
from cnncli.errors import CnnError
from cnncli.fsutil import write_json
from cnncli.runs.rundir import write_history


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cnncli.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=timeout)


# --- planning (no training) ------------------------------------------------------------------


def test_two_vary_keys_make_a_grid():
    variants = grid(parse_vary(["optimizer=adam,sgd", "augment=none,flip+crop"]), "net2")
    assert [v.label for v in variants] == ["optimizer=adam augment=none", "optimizer=adam augment=flip+crop",
                                           "optimizer=sgd augment=none", "optimizer=sgd augment=flip+crop"]
    assert variants[1].options == {"optimizer": "adam", "augment": "flip,crop", "arch": "net2"}
    assert variants[1].slug == "net2-optimizer_adam-augment_flip+crop"
    lrs = grid(parse_vary(["lr=0.01,1e-3"]), "mlp")
    assert [v.options["lr"] for v in lrs] == [0.01, 0.001] and lrs[1].slug == "mlp-lr_0.001"
    archs = grid(parse_vary(["arch=mlp,cnn003", "batch-size=32,64"]), None)
    assert archs[3].options == {"arch": "cnn003", "batch_size": 64} and archs[3].slug == "cnn003-batch-size_64"


@pytest.mark.parametrize("vary, arch, message", [
    (["colour=red,blue"], "net2", "unknown --vary key 'colour'"),
    (["optimizer"], "net2", "--vary takes KEY=V1,V2"),
    (["lr=0.1,fast"], "net2", "'fast' is not a number"),
    (["lr=0,0.1"], "net2", "--vary lr must be > 0, not 0"),
    (["dropout=0.2,1.5"], "mlp", "--vary dropout must be in [0, 1), not 1.5"),
    (["epochs=2,0"], "net2", "--vary epochs must be >= 1, not 0"),
    (["batch-size=32,1.5"], "net2", "'1.5' is not a whole number"),
    (["optimizer=adam,adam"], "net2", "lists a value twice"),
    (["optimizer=adam"], "net2", "at least two values"),
    (["arch=net1,net2"], "net2", "not both"),
    (["optimizer=adam,sgd"], None, "give --arch"),
])
def test_bad_vary_is_rejected(vary, arch, message):
    with pytest.raises(CnnError) as e:
        grid(parse_vary(vary), arch)
    assert message in str(e.value)


@pytest.mark.parametrize("vary, arch, message", [
    (["optimizer=adam,nesterov"], "net2", "--optimizer must be one of adam, rmsprop, sgd, adadelta, adagrad, adamw, "
                                          "nadam, not 'nesterov'"),
    (["activation=relu,tanh"], "resnet20", "arch resnet20 has a fixed activation"),
    (["activation=relu,swish"], "mlp", "--activation must be one of relu, sigmoid, tanh, not 'swish'"),
    (["dropout=0,0.5"], "net1", "arch net1 has no tunable dropout"),
    (["augment=none,blur"], "net2", "unknown augmentation 'blur'"),
    (["arch=net2,lenet6"], None, "unknown arch 'lenet6'"),
])
def test_values_are_checked_before_any_training(vary, arch, message):
    plan = Plan("x", ["digits"], grid(parse_vary(vary), arch), [0], {})
    with pytest.raises(CnnError, match=message.replace("(", r"\(")):
        check_plan(plan)


def test_a_comparison_needs_a_validation_split():
    plan = Plan("x", ["digits"], pooling_variants(), [0], {"val_split": 0.0})
    with pytest.raises(CnnError, match="needs a validation split"):
        check_plan(plan)


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    for args in (["compare", "--arch", "net2", "--dataset", "digits", "--vary", "speed=1,2"],
                 ["compare", "--arch", "net2", "--dataset", "digits", "--vary", "optimizer=adam,bogus"],
                 ["compare", "--arch", "net2", "--dataset", "digits", "--vary", "epochs=1,2", "--epochs", "3"],
                 ["compare-pooling", "--datasets", "digits", "--repeats", "0"]):
        r = cli(*args, "--out", str(tmp_path))
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # nothing was trained or written


# --- the numbers (a hand-made run directory) -------------------------------------------------


def fake_run(path: Path, val_acc, val_loss, seconds, test_acc=0.9, parameters=1234):
    rows = [{"epoch": i + 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": vl, "val_accuracy": va,
             "lr": 1e-3, "seconds": s, "elapsed_seconds": sum(seconds[: i + 1]), "images_per_s": 100.0}
            for i, (va, vl, s) in enumerate(zip(val_acc, val_loss, seconds))]
    path.mkdir(parents=True)
    write_history(path, rows)
    write_json(path / "metrics.json", {"parameters": parameters, "test_accuracy": test_acc})
    write_json(path / "config.json", {"data": {"classes": ["cat", "dog", "bird", "fish"]}})
    return path


def test_run_stats_read_the_history(tmp_path):
    run = fake_run(tmp_path / "r", val_acc=[0.5, 0.95, 0.952, 0.96, 0.96, 0.94],
                   val_loss=[1.0, 0.4, 0.3, 0.35, 0.5, 0.6], seconds=[9.0, 2.0, 2.0, 3.0, 2.0, 3.0])
    s = run_stats(run)
    assert s["best_val_accuracy"] == 0.96 and s["best_epoch"] == 4  # the first of two equal bests
    assert s["final_val_accuracy"] == 0.94
    assert s["epochs_to_99"] == 3  # 99% of 0.96 is 0.9504: epoch 2's 0.95 falls short, epoch 3's 0.952 not
    assert s["lowest_val_loss_epoch"] == 3
    assert s["seconds_per_epoch"] == 2.4  # epoch 1 (compilation) left out
    assert (s["parameters"], s["test_accuracy"], s["epochs"]) == (1234, 0.9, 6)
    assert s["chance"] == 0.25  # four classes in config.json


def row(variant, to99, test, low_loss, epochs=10, best_epoch=None, n=1, std=0.0):
    ms = lambda m, s=0.0: {"mean": m, "std": s, "n": n}  # noqa: E731
    """A summary row as `compare.summarize` makes it (only the keys `conclusion` reads)."""
    return {"variant": variant, "n": n, "diverged": 0, "epochs": epochs, "epochs_to_99": ms(to99),
            "test_accuracy": ms(test, std), "best_val_accuracy": ms(test), "lowest_val_loss_epoch": ms(low_loss),
            "best_epoch": ms(best_epoch or to99)}


def test_conclusion_names_the_winner_and_the_margin():
    line = conclusion("mnist", [row("net1", 2, 0.9912, 4), row("net2", 5, 0.9871, 7)])
    assert line == ("mnist: net1 converged faster (99% of its best val accuracy at epoch 2 vs 5 for net2); "
                    "net1 generalised better (test accuracy 0.9912 vs 0.9871 for net2, +0.41 points; one seed: "
                    "--repeats tells effect from luck); net1 overfit first (val loss lowest at epoch 4 of 10, "
                    "rising after).")


def test_conclusion_of_a_tie_says_so():
    line = conclusion("digits", [row("a", 1, 0.5, 1, epochs=1), row("b", 1, 0.5, 1, epochs=1)])
    assert line == ("digits: both reached 99% of their best val accuracy at epoch 1; a and b generalised equally "
                    "well (test accuracy 0.5000); no sign of overfitting within 1 epoch (every val loss still lowest "
                    "at the last epoch).")


def test_conclusion_with_seeds_says_whether_the_gap_is_luck():
    a, b = row("adam", 3, 0.62, 10, n=3, std=0.01), row("adagrad", 9, 0.60, 10, best_epoch=10, n=3, std=0.02)
    line = conclusion("cifar10", [b, a])
    assert ("adam converged faster (99% of its best val accuracy at epoch 3 vs 9 for adagrad, "
            "still improving at its last epoch)") in line
    assert "+2.00 points; within the spread over seeds, 2.24: could be luck" in line
    assert "no sign of overfitting within 10 epochs" in line
    a["test_accuracy"]["mean"] = 0.70
    assert "+10.00 points; larger than the spread over seeds, 2.24)" in conclusion("cifar10", [a, b])


def test_a_diverging_variant_is_reported_not_fatal(tmp_path):
    from cnncli.console import Out
    from cnncli.train.progress import Progress

    variants = grid(parse_vary(["lr=1e12,0.05"]), "net2")
    plan = Plan("lr", ["digits"], variants, [0], dict(optimizer="sgd", epochs=1, batch_size=32, limit=300),
                str(tmp_path))
    check_plan(plan)
    out = Out(json=True)
    res = run(plan, out, lambda: Progress(out, quiet=True))
    bad, good = res["summary"]["digits"]
    assert (bad["n"], bad["diverged"], bad["test_accuracy"]["mean"]) == (0, 1, None)
    assert (good["n"], good["diverged"]) == (1, 0) and good["test_accuracy"]["mean"] > 0.1
    assert "NaN/inf at epoch 1" in res["runs"][0]["error"]
    assert res["conclusions"]["digits"] == ("digits: nothing to compare: only 1 variant(s) trained without "
                                            "diverging; diverged (NaN loss): lr=1e+12.")
    assert table_rows(res["summary"]["digits"])[0][:3] == ["lr=1e+12 (1 diverged)", "-", "-"]
    assert list(res["curves"]["digits"]) == ["lr=0.05"]
    assert (tmp_path / "lr" / "comparison.png").is_file()


# --- end to end ------------------------------------------------------------------------------


def expected_cells(run_dirs: list[Path]) -> list[str]:
    """A table row recomputed from history.csv / metrics.json, independently of cnncli.compare."""
    import statistics

    per_run = []
    for d in run_dirs:
        with open(d / "history.csv") as f:
            hist = list(csv.DictReader(f))
        metrics = json.loads((d / "metrics.json").read_text())
        val = [float(r["val_accuracy"]) for r in hist]
        loss = [float(r["val_loss"]) for r in hist]
        secs = [float(r["seconds"]) for r in hist][1:]
        per_run.append([metrics["parameters"], max(val), val[-1], val.index(max(val)) + 1,
                        next(i + 1 for i, v in enumerate(val) if v >= 0.99 * max(val)),
                        loss.index(min(loss)) + 1, sum(secs) / len(secs), metrics["test_accuracy"]])
    cols = list(zip(*per_run))
    n = len(run_dirs)
    fmts = [None, ".4f", ".4f", "epoch", "epoch", "epoch", ".2f", ".4f"]
    cells = []
    for col, fmt in zip(cols, fmts):
        m = statistics.fmean(col)
        if fmt is None:
            cells.append(f"{round(m):,}")
        elif n == 1:
            cells.append(str(int(m)) if fmt == "epoch" else format(m, fmt))
        else:
            f = ".1f" if fmt == "epoch" else fmt
            cells.append(f"{m:{f}} ± {statistics.stdev(col):{f}}")
    return cells


def table_lines(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    i = lines.index(title)
    assert lines[i + 1].split()[:2] == ["variant", "params"]
    return lines[i + 2:]


def test_compare_on_digits_with_repeats(tmp_path):
    r = cli("compare", "--arch", "net2", "--dataset", "digits", "--vary", "optimizer=adam,sgd", "--epochs", "2",
            "--batch-size", "32", "--limit", "400", "--repeats", "2", "--seed", "-1", "--out", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    comp = tmp_path / "net2-digits-optimizer"
    assert res["dir"] == str(comp) and res["seeds"] == [-1, 0]  # any integers
    assert sorted(p.name for p in comp.iterdir()) == [
        "comparison.csv", "comparison.json", "comparison.png", "digits-net2-optimizer_adam-s-1",
        "digits-net2-optimizer_adam-s0", "digits-net2-optimizer_sgd-s-1", "digits-net2-optimizer_sgd-s0"]
    # Each run is a normal run directory, trained with its variant's option and the shared ones.
    for entry in res["runs"]:
        cfg = json.loads((Path(entry["run_dir"]) / "config.json").read_text())
        assert (cfg["optimizer"], cfg["seed"], cfg["epochs"], cfg["batch_size"], cfg["limit"]) == (
            entry["variant"].split("=")[1], entry["seed"], 2, 32, 400)
        assert (Path(entry["run_dir"]) / "checkpoints" / "best.msgpack").is_file()
    # The table (stderr with --json): mean ± std over the two seeds, recomputed from the histories.
    lines = table_lines(r.stderr, "digits (2 seeds, mean ± std)")
    for line, variant in zip(lines, ("adam", "sgd")):
        runs = [comp / f"digits-net2-optimizer_{variant}-s{s}" for s in (-1, 0)]
        assert line.split()[0] == f"optimizer={variant}"
        assert [c.strip() for c in line.split("  ")[1:] if c.strip()] == expected_cells(runs), line
    assert lines[2].startswith("digits: ") and "generalised better" in lines[2]
    assert res["conclusions"]["digits"] == lines[2]
    with open(comp / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(x["variant"], x["seed"]) for x in rows] == [("optimizer=adam", "-1"), ("optimizer=sgd", "-1"),
                                                         ("optimizer=adam", "0"), ("optimizer=sgd", "0")]
    from PIL import Image

    with Image.open(comp / "comparison.png") as im:
        assert im.size[0] > 800 and im.size[1] > 300


def test_compare_pooling_on_real_mnist(tmp_path, data_dir):
    r = cli("compare-pooling", "--datasets", "mnist", "--limit", "600", "--epochs", "2", "--data-dir", str(data_dir),
            "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    comp = tmp_path / "pooling"
    for f in ("comparison.png", "comparison.csv", "comparison.json"):
        assert (comp / f).is_file(), f
    lines = table_lines(r.stdout, "mnist (seed 0)")
    for line, arch in zip(lines, ("net1", "net2")):
        cells = line.split()
        assert cells[0] == arch
        assert cells[1:] == expected_cells([comp / f"mnist-{arch}-s0"]), line
    saved = json.loads((comp / "comparison.json").read_text())
    tests = {run["variant"]: run["test_accuracy"] for run in saved["runs"]}
    # Parameters pinned: net1 keeps 28x28x64 maps into Dense 128 (6.4M), net2 halves each side.
    assert lines[0].split()[1] == "6,442,762" and lines[1].split()[1] == "1,625,866"
    # A comparison of this size is not a result, but the conclusion must follow its own numbers.
    winner = max(tests, key=tests.get)
    assert f"{winner} generalised better" in lines[2]
    assert f"{abs(tests['net1'] - tests['net2']) * 100:.2f} points" in lines[2]
    assert saved["varied_settings"] == {"arch": ["net1", "net2"]}
    assert [row["chance"] for row in saved["summary"]["mnist"]] == [0.1, 0.1]  # ten digit classes
    assert saved["shared_settings"]["batch_size"] == 128 and saved["shared_settings"]["optimizer"] == "adam"


def test_a_variant_stuck_at_chance_does_not_win_on_speed():
    # Adadelta at Keras' lr 1e-3 barely moves in a few epochs: its "99% of best" comes at epoch 1.
    rows = [row("adam", 6, 0.94, 8), row("adadelta", 1, 0.09, 8), row("adagrad", 5, 0.10, 8)]
    for r in rows:
        r["chance"] = 0.1
    line = conclusion("digits", rows)
    assert "converged" not in line  # one variant learned: no speed race to report
    assert line.endswith("did not learn (best val accuracy within 10% of chance, 0.10): adadelta, adagrad.")
    rows[2]["best_val_accuracy"]["mean"] = 0.80
    assert "adagrad converged faster (99% of its best val accuracy at epoch 5 vs 6 for adam)" in conclusion("digits", rows)
