"""The epochs: steps over a seeded permutation, then validation, history, checkpoints, curves.

Batches are gathered on the host by a background thread and put on the devices (sharded over the
batch axis) while the previous step runs; metric sums stay on the device and are read back once per
progress refresh. Every epoch ends saved: `best` (when it improved) before `last`, then the log line,
so an epoch that was logged is never trained again. A first Ctrl-C finishes the step and saves.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from ..errors import CnnError
from ..faultpoints import point
from ..runs import checkpoint, rundir
from ..runs.loop import Loop
from ..tables import sig
from .evaluation import eval_batch_size, evaluate_arrays
from .feed import order
from .logs import EpochLog
from .optim import learning_rate
from .prepare import Setup
from .step import zero_metrics


@dataclass
class Writes:
    """What the epochs write into the run directory; a process of a multi-process job that is not
    the writer keeps the state in memory instead (`kept`)."""

    run_dir: Path
    writer: bool
    setup: Setup
    schedule: tuple  # the learning rate over the whole run, for curves.png
    kept: object = None  # the best epoch's state on the host, for processes that write no checkpoint

    def save(self, which: str, state, loop: Loop) -> None:
        if self.writer:
            meta = {"loop": loop.__dict__, "use_ema": bool(self.setup.cfg.ema), "arch": self.setup.cfg.arch}
            checkpoint.save(rundir.checkpoint_file(self.run_dir, which), state, meta)

    def plot(self, loop: Loop) -> None:
        if self.writer:
            from .. import plots

            cfg = self.setup.cfg
            plots.curves(loop.history, self.run_dir / "curves.png", f"{cfg.arch} on {Path(cfg.dataset).name}",
                         best_epoch=loop.best_epoch, schedule=self.schedule)


def run_epochs(s: Setup, run_dir: Path, loop: Loop, state, writer: bool, progress) -> tuple[object, Writes]:
    """Train until `trained(cfg, loop)`; (the state, the run's `Writes`: its plot and kept best state)."""
    cfg = s.cfg
    lr_at = learning_rate(cfg, s.steps_per_epoch)
    lr_at = lr_at if callable(lr_at) else (lambda _s, v=lr_at: v)
    out = Writes(run_dir, writer, s, _schedule_curve(lr_at, cfg.epochs, s.steps_per_epoch))
    last_plot = time.monotonic()
    interrupted = _Interrupt()
    logs = EpochLog(run_dir, loop.epoch + 1) if writer else contextlib.nullcontext()
    with interrupted, progress.session(cfg.epochs, s.steps_per_epoch, start_epoch=loop.epoch), logs as epoch_log:
        while not trained(cfg, loop):
            t0 = time.monotonic()
            state, sums, before = _steps(s, loop, state, interrupted, out, progress)
            row = _end_epoch(s, loop, state, sums, before, t0, lr_at, out)
            if writer:
                epoch_log.write(loop.history)  # after the checkpoint: a logged epoch is never trained again
            point("epoch-saved")
            progress.end_epoch(row)
            if time.monotonic() - last_plot > 30:  # a plot costs ~0.5 s: refresh it twice a minute at most
                out.plot(loop)
                last_plot = time.monotonic()
            if loop.out_of_time:
                progress.note(f"time budget {cfg.time_budget:g} min: {loop.train_seconds / 60:.1f} min trained and "
                              f"an epoch takes ~{row['seconds']:.0f} s here, more than timed at the start; stopping "
                              f"after epoch {loop.epoch} of {cfg.epochs}, testing epoch {loop.best_epoch}")
            if cfg.early_stopping and loop.bad_epochs >= cfg.early_stopping:
                progress.note(f"early stopping: no better {cfg.monitor} for {cfg.early_stopping} epochs; "
                              f"restoring epoch {loop.best_epoch}")
    if interrupted.hit:  # Ctrl-C during the last epoch's validation: stop before testing
        raise KeyboardInterruptSaved(run_dir, trained=True)
    return state, out


def _steps(s: Setup, loop: Loop, state, interrupted, out: Writes, progress):
    """One epoch's steps (from where an interrupted one stopped): (state, metric sums, the sums it started from)."""
    epoch = loop.epoch + 1
    t0 = time.monotonic()
    metrics = jax.device_put(zero_metrics(), s.replicated)
    before = np.array(loop.partial, np.float64)
    progress.start_epoch(epoch, loop.step_in_epoch)
    last_refresh = time.monotonic()
    step_in_epoch = loop.step_in_epoch
    for batch in s.feeder.epoch(order(s.seed, epoch, len(s.ds.train.y)), s.batch_size, loop.step_in_epoch):
        state, metrics = s.train_step(state, metrics, *batch, np.int32(loop.global_step))
        loop.global_step += 1
        step_in_epoch += 1
        if interrupted.hit or time.monotonic() - last_refresh > 0.5 or step_in_epoch == s.steps_per_epoch:
            sums, bad = jax.device_get(metrics)
            if math.isfinite(bad):
                _nan_stop(epoch, int(bad) - (loop.global_step - step_in_epoch) + 1, out.run_dir)
            tot = before + sums
            progress.update(step_in_epoch, tot[0] / max(tot[2], 1), tot[1] / max(tot[2], 1),
                            tot[2] - before[2], time.monotonic() - t0)
            last_refresh = time.monotonic()
            if interrupted.hit:
                loop.step_in_epoch, loop.partial = step_in_epoch, tot.tolist()
                loop.train_seconds += time.monotonic() - t0
                out.save("last", state, loop)
                if loop.history:
                    out.plot(loop)
                raise KeyboardInterruptSaved(out.run_dir)
    return state, before + np.asarray(jax.device_get(metrics[0]), np.float64), before


def _end_epoch(s: Setup, loop: Loop, state, sums, before, t0: float, lr_at, out: Writes) -> dict:
    """Validate, record the epoch's row (its time from `t0`, validation included), keep the best and
    save; returns the row."""
    cfg = s.cfg
    epoch = loop.epoch + 1
    val_loss = val_acc = None
    if s.ds.val is not None and len(s.ds.val.y):
        val_loss, val_acc = evaluate_arrays(s.eval_step, state.ema if cfg.ema else state.params, state.rest, s.mesh,
                                            s.ds.val.x, s.ds.val.y, eval_batch_size(s.batch_size))
    seconds = time.monotonic() - t0
    loop.train_seconds += seconds
    row = {
        "epoch": epoch, "train_loss": round(float(sums[0] / max(sums[2], 1)), 6),
        "train_accuracy": round(float(sums[1] / max(sums[2], 1)), 6),
        "val_loss": None if val_loss is None else round(val_loss, 6),
        "val_accuracy": None if val_acc is None else round(val_acc, 6),
        "lr": sig(float(lr_at(loop.global_step - 1)), 7), "seconds": round(seconds, 3),
        "elapsed_seconds": round(loop.train_seconds, 3),
        "images_per_s": round((sums[2] - before[2]) / seconds, 1),
    }
    loop.history.append(row)
    loop.epoch, loop.step_in_epoch, loop.partial = epoch, 0, [0.0, 0.0, 0.0]
    # The budget holds when epochs run slower than timed at the start: stop when another would overrun it.
    loop.out_of_time = bool(s.budget_minutes) and loop.epoch < cfg.epochs and \
        loop.train_seconds + seconds > s.budget_minutes * 60
    improved = _improved(cfg.monitor, row, loop.best_value)
    if improved:
        loop.best_epoch, loop.best_value, loop.bad_epochs = epoch, row[cfg.monitor], 0
    else:
        loop.bad_epochs += 1
    if out.writer:
        rundir.write_history(out.run_dir, loop.history)
    if improved:  # best before last: a run whose `last` exists always has the best it names
        out.save("best", state, loop)
        out.kept = None if out.writer else jax.device_get(state)
    out.save("last", state, loop)
    return row


def trained(cfg, loop: Loop) -> bool:
    """Whether the epochs are done: all of them, or early stopping or the time budget ended the run."""
    return (loop.epoch >= cfg.epochs or loop.out_of_time
            or bool(cfg.early_stopping and loop.bad_epochs >= cfg.early_stopping))


def _schedule_curve(lr_at, epochs: int, steps_per_epoch: int, points: int = 400):
    """(epoch positions, learning rates) of the whole schedule, for curves.png; step s ends at (s+1)/steps."""
    steps = np.unique(np.linspace(0, max(epochs * steps_per_epoch - 1, 0), points).round().astype(np.int64))
    # Optax schedules are elementwise: one call for all the points (a constant rate is broadcast).
    lrs = np.broadcast_to(np.asarray(lr_at(jax.numpy.asarray(steps)), np.float64), steps.shape)
    return (steps + 1) / steps_per_epoch, lrs.tolist()


class KeyboardInterruptSaved(CnnError):
    def __init__(self, run_dir: Path, trained: bool = False):
        what = ("training is complete and saved; the test evaluation was not run. Finish with"
                if trained else "checkpoint saved. Continue with")
        super().__init__(f"interrupted; {what}: cnn train --resume {run_dir}", exit_code=130)


class _Interrupt:
    """First Ctrl-C: finish the current step, save, exit. Second Ctrl-C: stop at once."""

    def __init__(self):
        self.hit = False

    def __enter__(self):
        self._old = None
        # A process started with Ctrl-C ignored (nohup, a script's background job) keeps ignoring it
        # here too, as it does everywhere else in the run.
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, *_):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _nan_stop(epoch: int, step: int, run_dir: Path | None):
    last = None if run_dir is None else rundir.checkpoint_file(run_dir, "last")
    kept = f"the last good checkpoint is {last}" if last and last.exists() else "no checkpoint was written"
    raise CnnError(f"loss became NaN/inf at epoch {epoch}, step {step}; training stopped ({kept}). "
                   f"Try a lower --lr.", exit_code=3)


def _improved(monitor: str, row: dict, best) -> bool:
    v = row.get(monitor)
    if v is None:  # no validation split: the newest epoch is the best we know
        return True
    if best is None:
        return True
    return v > best if monitor == "val_accuracy" else v < best
