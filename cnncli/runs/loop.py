"""A run's resume state: where its loop was when a checkpoint was written (the checkpoint's "loop"
record), read back with every field checked: a damaged or crafted record is one line, not a crash."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CnnError
from .rundir import HISTORY_FIELDS


@dataclass
class Loop:
    """Where the loop is: everything besides the arrays that a resumed run needs."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps completed within the current epoch (non-zero only after Ctrl-C)
    global_step: int = 0
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_value: float | None = None
    bad_epochs: int = 0  # early stopping: epochs since the best
    partial: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # metric sums of an interrupted epoch
    train_seconds: float = 0.0
    out_of_time: bool = False  # --time-budget ended the run before its planned epochs


def loop_from(meta: dict, path: Path) -> Loop:
    """The loop record of a checkpoint, every field checked for type and range: a damaged or crafted
    one is one line naming the file and the field, never a TypeError further on (#43)."""
    why = _loop_problem(meta.get("loop") if isinstance(meta, dict) else None)
    if why:
        raise CnnError(f"checkpoint {path} has a damaged or foreign loop record ({why}); it cannot be resumed")
    return Loop(**meta["loop"])


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _loop_problem(rec) -> str | None:
    """What is wrong with a checkpoint's loop record, or None."""
    if not isinstance(rec, dict):
        return "no loop record"
    unknown = set(rec) - set(Loop.__dataclass_fields__)
    if unknown:
        return f"unknown field {sorted(unknown)[0]!r}"
    for name in ("epoch", "step_in_epoch", "global_step", "best_epoch", "bad_epochs"):
        if name in rec and not _count(rec[name]):
            return f"{name} is not a count: {rec[name]!r}"
    if rec.get("best_value") is not None and not _number(rec["best_value"]):
        return f"best_value is not a number: {rec['best_value']!r}"
    if "train_seconds" in rec and not (_number(rec["train_seconds"]) and rec["train_seconds"] >= 0):
        return f"train_seconds is not a duration: {rec['train_seconds']!r}"
    if not isinstance(rec.get("out_of_time", False), bool):
        return f"out_of_time is not true or false: {rec['out_of_time']!r}"
    partial = rec.get("partial", [0.0, 0.0, 0.0])
    if not (isinstance(partial, list) and len(partial) == 3 and all(_number(v) for v in partial)):
        return f"partial is not 3 numbers: {partial!r}"
    history = rec.get("history", [])
    if not isinstance(history, list):
        return f"history is not a list: {history!r}"
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            return f"history row {i + 1} is not a record: {row!r}"
        if not (_count(row.get("epoch")) and row["epoch"] >= 1):
            return f"history row {i + 1} has no epoch number: {row.get('epoch')!r}"
        for key in HISTORY_FIELDS[1:]:
            v = row.get(key)
            if v is not None and not (_number(v) or (isinstance(v, float) and math.isnan(v))):
                return f"history row {i + 1}: {key} is not a number: {v!r}"
    return None
