"""Controlled comparisons: variants that differ in one setting (or a grid of settings), side by side.

Every run goes through `train.fit` and is an ordinary run directory, so `evaluate`, `predict` and
`explain` work on it:

    runs/compare/<name>/<dataset>-<variant>-s<seed>/    config.json, history.csv, checkpoints, ...
    runs/compare/<name>/comparison.{png,csv,json}

The table is computed from each run's `history.csv` and `metrics.json` only (see `run_stats`), so
anyone can recompute it. Nothing here imports JAX: parsing and checking happen before any training.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CnnError
from .fsutil import write_json, write_text
from .tables import csv_text
from .checks import seed_value
from .runs import read_config, read_history
from .train import resolve
from .train.config import options_by_name

# --vary key -> TrainConfig field. Values are comma separated; `augment` joins its ops with "+".
VARY_KEYS = {
    "optimizer": "optimizer", "lr": "lr", "activation": "activation", "dropout": "dropout",
    "batch-size": "batch_size", "epochs": "epochs", "arch": "arch", "augment": "augment",
}
# Per-run numbers, in table order: (key, column title).
COLUMNS = [
    ("parameters", "params"),
    ("best_val_accuracy", "best val acc"),
    ("final_val_accuracy", "final val acc"),
    ("best_epoch", "best epoch"),
    ("epochs_to_99", "epochs to 99% of best"),
    ("lowest_val_loss_epoch", "lowest val loss epoch"),
    ("seconds_per_epoch", "s/epoch"),
    ("test_accuracy", "test acc (best ckpt)"),
]
CURVE_KEYS = ("train_accuracy", "val_accuracy", "train_loss", "val_loss")
# The shared settings worth a line on screen (comparison.json keeps them all).
SHOWN = ("arch", "optimizer", "lr", "epochs", "batch_size", "activation", "dropout", "val_split", "limit",
         "augment", "normalize", "schedule")


@dataclass
class Variant:
    label: str  # what differs, as shown in tables: "net1", "optimizer=adam", "arch=mlp dropout=0.2"
    slug: str  # the same for directory names: "net1", "net2-optimizer_adam"
    options: dict  # TrainConfig fields this variant sets


@dataclass
class Plan:
    name: str  # the comparison directory's name under `out`
    datasets: list[str]
    variants: list[Variant]
    seeds: list[int]
    base: dict  # options every run shares (TrainConfig fields; None: the architecture's default)
    out: str = "runs/compare"
    command: str = ""  # the command line, recorded in comparison.json
    configs: dict = field(default_factory=dict)  # (dataset, slug, seed) -> resolved TrainConfig


# --- building a plan -------------------------------------------------------------------------


def parse_vary(specs: list[str]) -> list[tuple[str, list]]:
    """`["optimizer=adam,sgd", "lr=0.1,0.01"]` -> `[("optimizer", ["adam", "sgd"]), ("lr", [0.1, 0.01])]`."""
    parsed, seen = [], set()
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CnnError(f"--vary takes KEY=V1,V2,...; got {spec!r}")
        if key not in VARY_KEYS:
            raise CnnError(f"unknown --vary key {key!r}; choose from {', '.join(VARY_KEYS)}")
        if key in seen:
            raise CnnError(f"--vary {key} given twice; put all its values in one list")
        seen.add(key)
        texts = [v.strip() for v in values.split(",") if v.strip()]
        if not texts:
            raise CnnError(f"--vary {key}= has no values")
        vals = [_parse_value(key, t) for t in texts]
        if len(set(vals)) != len(vals):
            raise CnnError(f"--vary {key} lists a value twice: {values}")
        parsed.append((key, vals))
    return parsed


def _parse_value(key: str, text: str):
    """One --vary value as the type its option takes, range-checked."""
    if key in ("lr", "dropout", "batch-size", "epochs"):
        whole = key in ("batch-size", "epochs")
        try:
            v = int(text) if whole else float(text)
        except ValueError:
            raise CnnError(f"--vary {key}: {text!r} is not a {'whole number' if whole else 'number'}") from None
        # The range `cnn train` checks the option against: one definition (checks.py) for both.
        options_by_name()[VARY_KEYS[key]].metadata["rule"].check(f"--vary {key}", v)
        return v
    if key == "augment":
        return text.replace("+", ",")  # "flip+crop" is one value: the list separator is taken by --vary
    return text


def grid(varies: list[tuple[str, list]], arch: str | None) -> list[Variant]:
    """Every combination of the varied values (the first key changes slowest)."""
    keys = [k for k, _ in varies]
    if arch is not None and "arch" in keys:
        raise CnnError("give --arch or --vary arch=..., not both")
    if arch is None and "arch" not in keys:
        raise CnnError("give --arch NAME (or --vary arch=A,B)")
    variants = []
    for combo in itertools.product(*(vals for _, vals in varies)):
        opts = {VARY_KEYS[k]: v for k, v in zip(keys, combo)}
        label = " ".join(f"{k}={_show(v)}" for k, v in zip(keys, combo))
        a = opts.get("arch", arch)
        rest = [f"{k}_{_show(v)}" for k, v in zip(keys, combo) if k != "arch"]
        variants.append(Variant(label, "-".join([a, *rest]), opts | {"arch": a}))
    if len(variants) < 2:
        raise CnnError("nothing to compare: give --vary at least two values")
    return variants


def _show(v) -> str:
    return v.replace(",", "+") if isinstance(v, str) else format(v, "g")


def pooling_variants() -> list[Variant]:
    """Seed 001: net1 (max pool at stride 1) against net2 (no pooling, stride-2 conv)."""
    return [Variant(a, a, {"arch": a}) for a in ("net1", "net2")]


def check_plan(plan: Plan) -> None:
    """Resolve every run's options now, so a bad value fails before hours of training, not after."""
    from .models.registry import ACTIVATION_CHOICES, get_arch

    for dataset, v, seed in runs_of(plan):
        cfg = resolve(plan.base | v.options | {"dataset": dataset, "seed": seed})
        spec = get_arch(cfg.arch)
        if cfg.activation is not None and (spec.activation is None or cfg.activation not in ACTIVATION_CHOICES):
            why = "has a fixed activation" if spec.activation is None else f"takes {', '.join(ACTIVATION_CHOICES)}"
            raise CnnError(f"activation={cfg.activation} does not apply: arch {cfg.arch} {why}")
        if cfg.dropout is not None and spec.dropout is None:
            raise CnnError(f"dropout={cfg.dropout:g} does not apply: arch {cfg.arch} has no tunable dropout")
        if cfg.val_split <= 0:
            raise CnnError("a comparison needs a validation split (--val-split > 0): convergence and "
                           "overfitting are read from the validation curves")
        plan.configs[(dataset, v.slug, seed)] = cfg


def runs_of(plan: Plan):
    """(dataset, variant, seed) in training order: per data set and seed, every variant in turn,
    so an interrupted comparison still holds complete pairs."""
    for dataset in plan.datasets:
        for seed in plan.seeds:
            for v in plan.variants:
                yield dataset, v, seed


def varied_settings(plan: Plan) -> tuple[dict, dict]:
    """(options all runs share, {option: sorted values} of those that differ) from the resolved configs."""
    skip = {"name", "out", "extra", "seed", "dataset", "data_dir"}
    dicts = [c.to_dict() for c in plan.configs.values()]
    shared, differ = {}, {}
    for k in dicts[0]:
        if k in skip:
            continue
        vals = sorted({str(d[k]) for d in dicts})
        if len(vals) == 1:
            shared[k] = dicts[0][k]
        else:
            differ[k] = vals
    return shared, differ


# --- running ---------------------------------------------------------------------------------


def run(plan: Plan, out, progress_factory) -> dict:
    """Train every run of `plan` through `train.fit`, then write and return the comparison.

    `progress_factory()` gives a fresh `train.progress.Progress` for each run.
    """
    from .data import load_dataset
    from .train import fit
    from .runs import new_run_dir

    if not plan.configs:
        check_plan(plan)
    for dataset in plan.datasets:  # a missing data set fails now, not after the first one trained
        first = plan.configs[(dataset, plan.variants[0].slug, plan.seeds[0])]
        load_dataset(dataset, data_dir=first.data_dir, image_size=first.image_size, val_split=first.val_split,
                     limit=first.limit, seed=seed_value(first.seed), fit=first.fit)  # the subset fit() will draw
    comp_dir = new_run_dir(plan.out, plan.name)
    out.print(f"comparison directory: {comp_dir}")
    shared, differ = varied_settings(plan)
    out.print("shared settings: " + ", ".join(f"{k}={shared[k]}" for k in SHOWN if shared.get(k) is not None))
    out.print("varied: " + "; ".join(f"{k} {', '.join(v)}" for k, v in differ.items()))
    records = []
    total = len(plan.configs)
    started = time.monotonic()
    for i, (dataset, v, seed) in enumerate(runs_of(plan), 1):
        cfg = plan.configs[(dataset, v.slug, seed)]
        cfg.out, cfg.name = str(comp_dir), f"{Path(dataset).name}-{v.slug}-s{seed}"
        out.print(f"run {i}/{total}: {Path(dataset).name}, {v.label}, seed {seed}{_time_left(started, i - 1, total)}")
        record = {"dataset": Path(dataset).name, "variant": v.label, "seed": seed, "run_dir": str(comp_dir / cfg.name)}
        try:
            record |= run_stats(fit(cfg, progress_factory())["run_dir"])
        except CnnError as e:
            if e.exit_code != 3:  # 3: the loss became NaN. A diverging variant is a result; anything else is not
                raise
            out.print(f"run {i}/{total} diverged: {e}")
            record["error"] = str(e)
        records.append(record)
    result = summarize(plan, comp_dir, records, shared, differ)
    write_outputs(comp_dir, result)
    return result


def _time_left(started: float, done: int, total: int) -> str:
    """", about 3.5 min left" from the mean wall time of the runs done (variants differ: a rough guide)."""
    if not done:
        return ""
    left = (time.monotonic() - started) / done * (total - done)
    return f", about {left / 60:.1f} min left" if left >= 60 else f", about {left:.0f} s left"


# --- numbers ---------------------------------------------------------------------------------


def run_stats(run_dir) -> dict:
    """The comparison's numbers for one run, from its own files (history, metrics, config) alone."""
    run_dir = Path(run_dir)
    hist = read_history(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if not hist or any(r["val_accuracy"] is None for r in hist):
        raise CnnError(f"{run_dir} has no validation history; a comparison needs --val-split > 0")
    val = [r["val_accuracy"] for r in hist]
    best = max(val)
    losses = [r["val_loss"] for r in hist]
    # Epoch 1 includes XLA compilation; later epochs are the steady speed (one epoch: all we have).
    steady = [r["seconds"] for r in hist[1:]] or [hist[0]["seconds"]]
    return {
        "parameters": metrics["parameters"],
        "best_val_accuracy": best,
        "final_val_accuracy": val[-1],
        "best_epoch": int(hist[val.index(best)]["epoch"]),
        "epochs_to_99": int(next(r["epoch"] for r in hist if r["val_accuracy"] >= 0.99 * best)),
        "lowest_val_loss_epoch": int(hist[losses.index(min(losses))]["epoch"]),
        "seconds_per_epoch": statistics.fmean(steady),
        "test_accuracy": metrics["test_accuracy"],
        "epochs": len(hist),
        "chance": 1 / len(read_config(run_dir)["data"]["classes"]),  # accuracy of guessing
    }


def summarize(plan: Plan, comp_dir: Path, records: list[dict], shared: dict, differ: dict) -> dict:
    """Mean and std over seeds per (data set, variant), mean curves, one conclusion per data set."""
    summary, curves, conclusions = {}, {}, {}
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        rows, panel = [], {}
        for v in plan.variants:
            runs = [r for r in records if r["dataset"] == dataset and r["variant"] == v.label]
            ok = [r for r in runs if "error" not in r]
            rows.append({"variant": v.label, "n": len(ok), "diverged": len(runs) - len(ok),
                         "epochs": ok[0]["epochs"] if ok else 0, "chance": ok[0]["chance"] if ok else None}
                        | {k: _mean_std([r[k] for r in ok]) for k, _ in COLUMNS})
            if ok:
                panel[v.label] = mean_curves([r["run_dir"] for r in ok])
        summary[dataset], curves[dataset] = rows, panel
        conclusions[dataset] = conclusion(dataset, rows)
    return {
        "name": plan.name, "dir": str(comp_dir), "command": plan.command, "seeds": plan.seeds,
        "shared_settings": shared, "varied_settings": differ,
        "runs": records, "summary": summary, "conclusions": conclusions, "curves": curves,
        "files": {k: str(comp_dir / f"comparison.{k}") for k in ("png", "csv", "json")},
    }


def _mean_std(values: list) -> dict:
    """{"mean", "std", "n"}: sample std over seeds (0 for one seed); None when a value is missing."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "n": len(values)}
    m = statistics.fmean(values)
    return {"mean": m, "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def mean_curves(run_dirs: list) -> dict:
    """Per-epoch mean (and std when repeated) of the train/validation curves over the seeds' runs."""
    hists = [read_history(d) for d in run_dirs]
    n = min(len(h) for h in hists)
    out = {"epoch": [int(r["epoch"]) for r in hists[0][:n]]}
    for k in CURVE_KEYS:
        cols = [[h[i][k] for h in hists] for i in range(n)]
        out[k] = [statistics.fmean(c) for c in cols]
        if len(hists) > 1:
            out[f"{k}_std"] = [statistics.stdev(c) for c in cols]
    return out


def conclusion(dataset: str, rows: list[dict]) -> str:
    """One line from the numbers: who converged faster, who generalised better and by how much,
    who started to overfit first, and whether the gap is larger than the spread over seeds."""
    def mean(r, k):
        return r[k]["mean"]

    diverged = [r["variant"] for r in rows if r["diverged"]]
    note = f"; diverged (NaN loss): {', '.join(diverged)}" if diverged else ""
    rows = [r for r in rows if r["n"]]
    if len(rows) < 2:
        return f"{dataset}: nothing to compare: only {len(rows)} variant(s) trained without diverging{note}."
    quality = "test_accuracy" if all(mean(r, "test_accuracy") is not None for r in rows) else "best_val_accuracy"
    what = "test accuracy" if quality == "test_accuracy" else "best val accuracy"
    by_q = sorted(rows, key=lambda r: -mean(r, quality))
    top, second = by_q[0], by_q[1]
    gap = mean(top, quality) - mean(second, quality)
    # A variant stuck near chance "reaches 99% of its best" at once: it must not win on speed.
    stuck = [r for r in rows if _stuck(r)]
    learned = [r for r in rows if r not in stuck]
    parts = [_speed_clause(learned)] if len(learned) >= 2 else []
    if gap == 0:
        parts.append(f"{top['variant']} and {second['variant']} generalised equally well "
                     f"({what} {mean(top, quality):.4f})")
    else:
        parts.append(f"{top['variant']} generalised {'better' if len(rows) == 2 else 'best'} ({what} "
                     f"{mean(top, quality):.4f} vs {mean(second, quality):.4f} for {second['variant']}, "
                     f"{gap * 100:+.2f} points{_noise(top, second, quality)})")
    parts.append(_overfit_clause(learned or rows))
    if stuck:
        parts.append(f"did not learn (best val accuracy within 10% of chance, {rows[0]['chance']:.2f}): "
                     + ", ".join(r["variant"] for r in stuck))
    return f"{dataset}: " + "; ".join(parts) + note + "."


def _stuck(row: dict) -> bool:
    chance = row.get("chance")
    return chance is not None and row["best_val_accuracy"]["mean"] <= chance + 0.1 * (1 - chance)


def _speed_clause(rows: list[dict]) -> str:
    by_speed = sorted(rows, key=lambda r: r["epochs_to_99"]["mean"])
    fast, slow = by_speed[0], by_speed[-1]
    f, s = fast["epochs_to_99"]["mean"], slow["epochs_to_99"]["mean"]
    if f == s:
        return f"{'both' if len(rows) == 2 else 'all'} reached 99% of their best val accuracy at epoch {f:.3g}"
    word = "faster" if len(rows) == 2 else "fastest"
    still = ", still improving at its last epoch" if slow["best_epoch"]["mean"] >= slow["epochs"] else ""
    return (f"{fast['variant']} converged {word} (99% of its best val accuracy at epoch {f:.3g} vs {s:.3g} "
            f"for {slow['variant']}{still})")


def _overfit_clause(rows: list[dict]) -> str:
    early = min(rows, key=lambda r: r["lowest_val_loss_epoch"]["mean"] / r["epochs"])
    e, n = early["lowest_val_loss_epoch"]["mean"], early["epochs"]
    if e >= n:
        return (f"no sign of overfitting within {n} epoch{'s' * (n != 1)} "
                "(every val loss still lowest at the last epoch)")
    return f"{early['variant']} overfit first (val loss lowest at epoch {e:.3g} of {n}, rising after)"


def _noise(a: dict, b: dict, key: str) -> str:
    """Whether a difference of means exceeds the seeds' spread; with one seed we cannot know."""
    if a[key]["n"] < 2:
        return "; one seed: --repeats tells effect from luck"
    spread = (a[key]["std"] ** 2 + b[key]["std"] ** 2) ** 0.5
    gap = a[key]["mean"] - b[key]["mean"]
    if gap > spread:
        return f"; larger than the spread over seeds, {spread * 100:.2f}"
    return f"; within the spread over seeds, {spread * 100:.2f}: could be luck"


# --- output ----------------------------------------------------------------------------------


def table_rows(rows: list[dict]) -> list[list[str]]:
    """Formatted cells: mean, with ± std when there are several seeds."""
    return [[r["variant"] + (f" ({r['diverged']} diverged)" if r["diverged"] else ""),
             *(_cell(k, r[k]) for k, _ in COLUMNS)] for r in rows]


def _cell(key: str, ms: dict) -> str:
    m, s, n = ms["mean"], ms["std"], ms["n"]
    if m is None:
        return "-"
    if key == "parameters":
        return f"{round(m):,}"
    if key.endswith("accuracy"):
        fmt = ".4f"
    elif key == "seconds_per_epoch":
        fmt = ".2f"
    else:  # epochs: whole numbers for one seed
        fmt = "d" if n == 1 else ".1f"
        m = int(m) if n == 1 else m
    return format(m, fmt) + (f" ± {s:{'.1f' if fmt == 'd' else fmt}}" if n > 1 else "")


def print_result(out, result: dict) -> None:
    """One table per data set, then its conclusion; then where the files are."""
    n = len(result["seeds"])
    for dataset, rows in result["summary"].items():
        seeds = f"{n} seeds, mean ± std" if n > 1 else f"seed {result['seeds'][0]}"
        out.table(f"{dataset} ({seeds})", ["variant", *(t for _, t in COLUMNS)], table_rows(rows))
        out.print(result["conclusions"][dataset])
    out.print("wrote " + ", ".join(result["files"].values()))


def write_outputs(comp_dir: Path, result: dict) -> None:
    """comparison.csv (one row per run), comparison.json (everything), comparison.png (curves)."""
    from . import plots

    fields = ["dataset", "variant", "seed", *(k for k, _ in COLUMNS), "epochs", "run_dir", "error"]
    write_text(comp_dir / "comparison.csv", csv_text(fields, result["runs"]))
    write_json(comp_dir / "comparison.json", result)
    plots.comparison(result["curves"], comp_dir / "comparison.png", _title(result))


def _title(result: dict) -> str:
    n = len(result["seeds"])
    return f"{result['name']}: {'mean of ' + str(n) + ' seeds' if n > 1 else 'seed ' + str(result['seeds'][0])}"
