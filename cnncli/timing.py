"""Timing groups of steps: what `cnn bench` reports and what `--time-budget` plans with.

A step is compiled and warmed up once (`Timer`), then timed in groups of steps; images/s is the
median group's (`rates`), so a hiccup of the machine during a few steps does not set the figure.
"""

from __future__ import annotations

import statistics
import time


class Timer:
    """One framework's step, compiled and warmed up: `block(steps)` times `steps` steps (seconds)."""

    def __init__(self, run_step, sync, warmup: int):
        t = time.perf_counter()
        sync(run_step())
        self.compile_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(warmup):
            out = run_step()
        if warmup:
            sync(out)
        self.warmup_s = time.perf_counter() - t
        self.run_step, self.sync = run_step, sync

    def block(self, steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            out = self.run_step()
        self.sync(out)
        return time.perf_counter() - t


def interleave(blocks: dict, repeats: int, steps: int, progress=None) -> dict[str, list[float]]:
    """name -> seconds of each of its `repeats` groups; round r runs the groups in an order rotated by
    r, so a slower minute of the machine falls on every framework alike. `progress()` after each group."""
    names, seconds = list(blocks), {name: [] for name in blocks}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds[name].append(blocks[name](steps))
            if progress is not None:
                progress()
    return seconds


def rates(seconds: list[float], batch_size: int, steps: int) -> dict:
    """images/s median/min/max of timed groups."""
    per_group = [steps * batch_size / s for s in seconds]
    return dict(images_per_s=statistics.median(per_group), images_per_s_min=min(per_group),
                images_per_s_max=max(per_group), repeats=len(seconds), steps=steps)
