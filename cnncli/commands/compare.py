"""`cnn compare-pooling` and `cnn compare`: train variants with identical settings and compare their curves."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

from ..host import data_dir_named
from ..errors import CnnError
from ..checks import AT_LEAST_1, ChoiceList
from ..train.config import DATASET
from .options import DataDir, Dataset, Epochs, Json, Limit, OptArch, OptBatchSize, ValSplit, config_option, option

Repeats = Annotated[int, option("--repeats", rule=AT_LEAST_1, metavar="N",
                                help="Train every variant with N seeds (--seed, --seed+1, ...) and report mean ± std.")]
CompareOut = Annotated[str, option("--out", help="Parent folder of comparison directories.", metavar="DIR")]
FirstSeed = Annotated[int, config_option("seed", help="First seed (--repeats N trains seeds S to S+N-1).")]


def _run_comparison(plan, json_out: bool) -> None:
    """Check the plan, train every run through the engine, print tables and conclusions."""
    from ..compare import check_plan, run
    from ..comparison import print_result
    from ..console import Out
    from ..train.progress import Progress

    check_plan(plan)  # before any training: a bad value costs nothing
    o = Out(json=json_out)
    result = run(plan, o, lambda: Progress(o))
    print_result(o, result)
    if json_out:
        o.emit_json({k: v for k, v in result.items() if k != "curves"})


def _seeds(seed: int, repeats: int) -> list[int]:
    return list(range(seed, seed + repeats))  # any integers: the engine maps each through config.seed_value


def _data_dir(data_dir: Optional[Path]) -> Optional[str]:
    return str(data_dir) if data_dir else data_dir_named()


def _command_line() -> str:
    return " ".join(["cnn", *sys.argv[1:]])


def compare_pooling(
    datasets: Annotated[str, option("--datasets", help="Data sets to compare on.", metavar="NAMES",
                                    rule=ChoiceList(DATASET.values, also=DATASET.also, other=DATASET.other))
                        ] = "mnist,cifar10",
    epochs: Annotated[int, config_option("epochs", help="Passes over the training set (seed 001: 16).")] = 16,
    batch_size: Annotated[int, config_option("batch_size", help="Images per step (seed 001: 128).")] = 128,
    optimizer: Annotated[str, config_option("optimizer", help="Optimizer for both nets (seed 001: adam).")] = "adam",
    seed: FirstSeed = 0,
    repeats: Repeats = 1,
    limit: Limit = None,
    val_split: ValSplit = None,
    data_dir: DataDir = None,
    out: CompareOut = "runs/compare",
    name: Annotated[str, option("--name", help="Comparison directory name (auto-numbered).", metavar="NAME")] = "pooling",
    json: Json = False,
):
    """Seed 001's study: net1 (max pooling) vs net2 (strided conv, no pooling), identical settings.

    Runs go to OUT/NAME/<dataset>-<arch>-s<seed> (normal run directories).
    Writes comparison.png (curves on shared axes), comparison.csv and comparison.json.
    Prints a table and a one-line conclusion per data set.
    """
    from ..compare import Plan, pooling_variants

    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names:
        raise CnnError("--datasets is empty")
    base = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, limit=limit, val_split=val_split,
                data_dir=_data_dir(data_dir))
    plan = Plan(name, names, pooling_variants(), _seeds(seed, repeats), base, out, _command_line())
    _run_comparison(plan, json)


def compare(
    dataset: Dataset,
    vary: Annotated[list[str], option("--vary", metavar="KEY=V1,V2",
                                      help="KEY one of optimizer, lr, activation, dropout, batch-size, epochs, arch, "
                                           "augment (ops joined by +: flip+crop). Several --vary make a grid.")],
    arch: OptArch = None,
    epochs: Epochs = None,
    batch_size: OptBatchSize = None,
    seed: FirstSeed = 0,
    repeats: Repeats = 1,
    limit: Limit = None,
    val_split: ValSplit = None,
    data_dir: DataDir = None,
    out: CompareOut = "runs/compare",
    name: Annotated[Optional[str], option("--name", metavar="NAME",
                                          help="Comparison directory name (default <arch>-<dataset>-<keys>).")] = None,
    json: Json = False,
):
    """Train variants that differ in one setting (or a grid of them) and compare their curves.

    Seed 001's optimizer study: cnn compare --arch net2 --dataset cifar10 --vary optimizer=adam,adadelta,adagrad
    Runs go to OUT/NAME/<dataset>-<variant>-s<seed> (normal run directories).
    Writes comparison.png (curves on shared axes), comparison.csv and comparison.json.
    Prints a table and a one-line conclusion.
    """
    from ..compare import Plan, grid, parse_vary

    varies = parse_vary(vary)
    keys = [k for k, _ in varies]
    for k, given in (("epochs", epochs), ("batch-size", batch_size)):
        if k in keys and given is not None:
            raise CnnError(f"--{k} and --vary {k}=... conflict; give one")
    variants = grid(varies, arch)
    default_name = "-".join([*([arch] if arch else []), Path(dataset).name, *keys])
    base = dict(epochs=epochs, batch_size=batch_size, limit=limit, val_split=val_split, data_dir=_data_dir(data_dir))
    plan = Plan(name or default_name, [dataset], variants, _seeds(seed, repeats), base, out, _command_line())
    _run_comparison(plan, json)
