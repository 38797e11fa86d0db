"""The training loop: data in, a run directory out. Every command that trains goes through `fit`.

    prepare (train/prepare.py)  options resolved against the data and the machine, model, steps
    open the run                a new run directory, or the resumed one's checkpoint
    epochs (train/epochs.py)    steps, validation, history, checkpoints
    finish (train/finish.py)    the best epoch tested and calibrated, metrics.json
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax

from .. import __version__
from ..errors import CnnError
from ..fsutil import write_bytes, write_json
from ..runs import checkpoint, rundir
from ..runs.loop import Loop, loop_from
from .config import TrainConfig
from .epochs import run_epochs, trained
from .finish import finish
from .prepare import Setup, data_record, prepare
from .progress import Progress


def fit(cfg: TrainConfig, progress: Progress, resume: Path | None = None) -> dict:
    """Train `cfg` (or continue the run in `resume`) and return the run's summary."""
    from .. import distributed
    from ..runtime import setup_jax

    setup_jax()
    t_start = time.monotonic()
    writer = distributed.is_writer()  # of several processes, only the first writes and prints
    progress.quiet = progress.quiet or not writer
    # One writer at a time, refused before any work; it also removes a killed writer's temporary files.
    lock = None if resume is None or not writer else rundir.claim(Path(resume))
    try:
        return _fit(cfg, progress, resume, lock, t_start, writer)
    except (jax.errors.JaxRuntimeError, ValueError) as e:
        if distributed.lost_peer(e):  # one line, and guard.py exits without waiting for the peer
            raise distributed.peer_lost(e) from None
        raise
    finally:
        if lock is not None:
            lock.release()


def _fit(cfg: TrainConfig, progress: Progress, resume: Path | None, lock, t_start: float, writer: bool) -> dict:
    s = prepare(cfg, progress, resume)
    run_dir, lock, loop, state = _open_run(s, resume, lock, progress, writer)
    try:
        loop.train_seconds += s.budget_seconds  # timing the step is part of training
        state, out = run_epochs(s, run_dir, loop, jax.device_put(state, s.replicated), writer, progress)
        return finish(s, loop, state, out, progress, t_start)
    finally:
        if resume is None and lock is not None:
            lock.release()


def _open_run(s: Setup, resume: Path | None, lock, progress, writer):
    """(run directory, its lock, loop, state): a new run directory (locked) with its config.json, or
    the resumed one (locked by the caller) with the state and loop of its last checkpoint (a fresh
    start if it has none). A process that does not write gets no directory of a new run."""
    cfg, state = s.cfg, s.state
    if not writer:
        saved = None if resume is None else _saved(resume, state)
        return (resume, None, Loop(), state) if saved is None else (resume, None, *saved)
    try:
        loop = Loop()
        if resume is not None:
            run_dir = Path(resume)
            record = rundir.read_config(run_dir)
            saved = _saved(run_dir, state)
            if saved is not None:
                loop, state = saved
                if loop.out_of_time and cfg.epochs != record["epochs"]:
                    loop.out_of_time = False  # `--epochs N`: the run is asked for its epochs again
                if trained(cfg, loop) and (run_dir / "metrics.json").is_file():
                    done = f"its time budget ended it after epoch {loop.epoch}" if loop.out_of_time else \
                        f"its {cfg.epochs} epochs"
                    raise CnnError(f"{run_dir} already finished ({done}); pass --epochs N to train longer")
                _derive_best(run_dir, loop, progress)
            else:  # killed before its first epoch was saved
                progress.note(f"{run_dir} has no checkpoint yet: training it from the start")
            if record["epochs"] != cfg.epochs:  # `--resume DIR --epochs N` extends the run
                _retire_metrics(run_dir, record["epochs"])
                write_json(run_dir / "config.json", record | {"epochs": cfg.epochs})
            if trained(cfg, loop):
                progress.note(f"resuming {run_dir}: training is complete; testing the best epoch")
            else:
                progress.note(f"resuming {run_dir} at epoch {loop.epoch + 1}, step {loop.step_in_epoch}")
        else:
            run_dir = rundir.new_run_dir(cfg.out, cfg.name or f"{cfg.arch}-{Path(cfg.dataset).name}")
            lock = rundir.claim(run_dir)
            record = cfg.to_dict() | {"data": data_record(s), "cnn_version": __version__}
            write_json(run_dir / "config.json", record)
        progress.note(f"run directory: {run_dir}")
        return run_dir, lock, loop, state
    except BaseException:
        if lock is not None and resume is None:
            lock.release()
        raise


def _saved(run_dir: Path, state):
    """(loop, state) of a run's last checkpoint, its arrays put into `state`'s structure; None without one."""
    last = rundir.checkpoint_file(run_dir, "last")
    if not last.is_file():
        return None
    meta, arrays = checkpoint.load(last)
    return loop_from(meta, last), checkpoint.unflatten_into(state, arrays, str(last))


def _retire_metrics(run_dir: Path, epochs: int) -> None:
    """An extended run's old test figures are kept as metrics.<N>-epochs.json: left as metrics.json,
    they said the run was finished while its new epochs were not (a Ctrl-C then printed a resume
    command that answered "already finished", #43)."""
    old = run_dir / "metrics.json"
    if old.is_file():
        os.replace(old, run_dir / f"metrics.{epochs}-epochs.json")


def _derive_best(run_dir: Path, loop: Loop, progress) -> None:
    """A `best` lost to a kill while it was first written is the `last` whose epoch it was."""
    best = rundir.checkpoint_file(run_dir, "best")
    if loop.epoch and loop.best_epoch == loop.epoch and loop.step_in_epoch == 0 and not best.is_file():
        write_bytes(best, rundir.checkpoint_file(run_dir, "last").read_bytes())
        progress.note(f"note: best.msgpack was missing; epoch {loop.best_epoch} (the best) restored from last.msgpack")
