"""`--time-budget`: how many epochs fit in the minutes given, timed on this machine before training."""

from __future__ import annotations

import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ..errors import CnnError
from ..timing import Timer, rates
from ..checks import seed_value
from .config import TrainConfig
from .feed import order
from .step import zero_metrics

# --time-budget times BUDGET_GROUPS groups of 2 steps after the compiling one and two warm-up ones (the
# first steps after compiling run ~10-20% slower), and plans for this share of the budget (epochs of
# airbench94 on CIFAR-10 varied by up to 7% within one run).
BUDGET_GROUPS = 8
BUDGET_SHARE = 0.95


def epochs_within_budget(cfg: TrainConfig, train_step, state, feeder, bs: int, steps_per_epoch: int,
                         validate=None):
    """Time the step as `cnn bench` does, on a throwaway copy of the state; return the epochs (at most
    cfg.epochs) that fit in cfg.time_budget minutes, the seconds this took, and a line saying so. The real
    run compiles its step again (its schedule spans the chosen epochs), so the budget pays for that too.

    `validate()`, if given, returns the seconds one epoch's validation pass takes (`validation_seconds`):
    an epoch is its steps and that pass. airbench94's 10 test-time views of 5,000 validation images
    took ~90 of its ~350 s epochs on the AVX2 EPYC, and a plan from the steps alone overran the budget."""
    if steps_per_epoch < 3 + 2 * BUDGET_GROUPS:  # a few images: nothing worth budgeting
        return cfg.epochs, 0.0, f"time budget {cfg.time_budget:g} min: epochs too short to time, running {cfg.epochs}"
    carry = {"state": state, "metrics": jax.device_put(zero_metrics(), NamedSharding(feeder.mesh, P())), "i": 0}
    batches = feeder.epoch(order(seed_value(cfg.seed), 1, len(feeder.y)), bs)

    def run():
        carry["state"], carry["metrics"] = train_step(carry["state"], carry["metrics"], *next(batches),
                                                      np.int32(carry["i"]))
        carry["i"] += 1
        return carry["metrics"]

    t0 = time.perf_counter()
    try:
        # The median group: a hiccup of the machine during these few steps does not set the whole run.
        timer = Timer(run, jax.block_until_ready, warmup=2)
        r = rates([timer.block(2) for _ in range(BUDGET_GROUPS)], bs, steps=2)
    finally:
        batches.close()
    val_s = validate() if validate is not None else 0.0
    spent = time.perf_counter() - t0
    per_epoch = steps_per_epoch * bs / r["images_per_s"] + val_s
    compile_s = timer.compile_s + timer.warmup_s  # what the real run's first steps cost again
    fit_epochs = int((BUDGET_SHARE * cfg.time_budget * 60 - spent - compile_s) // per_epoch)
    if fit_epochs < 1:
        raise CnnError(f"--time-budget {cfg.time_budget:g} min does not fit one epoch here (~{per_epoch / 60:.1f} "
                       f"min per epoch, after ~{(spent + compile_s) / 60:.1f} min compiling and timing the step)")
    epochs = min(fit_epochs, cfg.epochs)
    note = (f"time budget {cfg.time_budget:g} min: ~{per_epoch:.0f} s per epoch here"
            + (f" (~{val_s:.0f} s of it validating)" if val_s >= 0.5 else "") + f", so {epochs} epoch(s)"
            + (f" (fits {fit_epochs}, capped by --epochs)" if fit_epochs > cfg.epochs else ""))
    if epochs < cfg.epochs and cfg.recipe:  # its figure was measured with all of them: say so before training
        from ..recipes import get_recipe

        if get_recipe(cfg.recipe)["options"].get("epochs") == cfg.epochs:
            note += (f"; fewer than the {cfg.epochs} recipe {cfg.recipe} plans, so expect less than its "
                     f"measured accuracy (`cnn recipes`), or pass --time-budget 0 to train them all")
        else:  # --epochs overrode the recipe's: the recipe planned neither number
            note += f"; fewer than the {cfg.epochs} --epochs asks (--time-budget 0 trains them all)"
    return epochs, spent, note


def validation_seconds(eval_step, params, rest, mesh, x, y, batch_size: int) -> float:
    """Seconds a validation pass over (x, y) takes, as the epochs run it (`evaluate_arrays`): timed on up
    to two batches after one that compiles the step (the real run then finds it compiled)."""
    from .evaluation import evaluate_arrays

    n = len(y)
    if n == 0:
        return 0.0
    first = min(batch_size, n)
    evaluate_arrays(eval_step, params, rest, mesh, x[:first], y[:first], batch_size)
    k = min(n, 2 * first)
    t = time.perf_counter()
    evaluate_arrays(eval_step, params, rest, mesh, x[:k], y[:k], batch_size)
    return (time.perf_counter() - t) * n / k
