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
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CnnError
from .checks import seed_value
from .comparison import run_stats, summarize, write_outputs
from .train import resolve
from .train.config import options_by_name

# --vary key -> TrainConfig field. Values are comma separated; `augment` joins its ops with "+".
VARY_KEYS = {
    "optimizer": "optimizer", "lr": "lr", "activation": "activation", "dropout": "dropout",
    "batch-size": "batch_size", "epochs": "epochs", "arch": "arch", "augment": "augment",
}
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
