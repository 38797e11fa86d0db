"""What a comparison found: each run's numbers from its own files (`run_stats`), their mean and spread
over seeds, the mean curves, a conclusion in words per data set, and the table, plot and files
(comparison.{png,csv,json}). Reads run directories only: anyone can recompute a comparison.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .errors import CnnError
from .fsutil import write_json, write_text
from .runs import read_config, read_history
from .tables import csv_text

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


def summarize(plan, comp_dir: Path, records: list[dict], shared: dict, differ: dict) -> dict:
    """Mean and std over seeds per (data set, variant) of a `compare.Plan`, mean curves, one conclusion
    per data set."""
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
