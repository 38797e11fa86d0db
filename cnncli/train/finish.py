"""After the last epoch: the best epoch tested, calibrated on the validation split, metrics.json written."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from ..calibrate import NO_VAL, calibrate, summary_line
from ..calibrate import write as write_calibration
from ..errors import CnnError
from ..faultpoints import point
from ..fsutil import write_json
from ..runs import checkpoint, rundir
from ..runs.loop import Loop
from .epochs import KeyboardInterruptSaved, Writes
from .evaluation import eval_batch_size, evaluate_arrays
from .prepare import Setup


def finish(s: Setup, loop: Loop, state, out: Writes, progress, t_start: float) -> dict:
    """Test the best epoch, calibrate it, write metrics.json; return the run's summary."""
    cfg, eval_bs = s.cfg, eval_batch_size(s.batch_size)
    try:
        point("test-evaluation")
        out.plot(loop)
        best_state = out.kept or _best_state(out.run_dir, loop, jax.device_get(state), progress)
        best_params = best_state.ema if cfg.ema else best_state.params
        test_loss = test_acc = None
        if s.ds.test is not None and len(s.ds.test.y):
            test_loss, test_acc = evaluate_arrays(s.eval_step, best_params, best_state.rest, s.mesh, s.ds.test.x,
                                                  s.ds.test.y, eval_bs)
        calibration = _calibrate(s, best_params, best_state.rest, eval_bs, out.run_dir if out.writer else None)
    except KeyboardInterrupt:  # every epoch is saved: what is left is the test evaluation
        raise KeyboardInterruptSaved(out.run_dir, trained=True) from None
    progress.note(summary_line(calibration))
    steady = [r["images_per_s"] for r in loop.history[1:]] or [r["images_per_s"] for r in loop.history]
    summary = {
        "run_dir": str(out.run_dir),
        "arch": cfg.arch,
        "dataset": cfg.dataset,
        "epochs": loop.epoch,
        "best_epoch": loop.best_epoch,
        "best_val_accuracy": max((r["val_accuracy"] for r in loop.history if r["val_accuracy"] is not None), default=None),
        "best_val_loss": min((r["val_loss"] for r in loop.history if r["val_loss"] is not None), default=None),
        "final_train_accuracy": loop.history[-1]["train_accuracy"],
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "stopped_early": loop.epoch < cfg.epochs,
        "train_seconds": round(loop.train_seconds, 2),
        "wall_seconds": round(time.monotonic() - t_start, 2),
        "images_per_s": float(np.median(steady)),
        "parameters": int(sum(np.size(p) for p in jax.tree.leaves(best_params))),
        "temperature": calibration["temperature"],
        "unsure_below": calibration["unsure_below"],
    }
    if out.writer:
        write_json(out.run_dir / "metrics.json", summary)
    return summary


def _calibrate(s: Setup, params, rest, batch_size: int, run_dir: Path | None) -> dict:
    """Fit the temperature and the unsure threshold on the validation split (see calibrate.py) and
    write calibration.json; without a validation split: temperature 1, no threshold."""
    ds = s.ds
    if ds.val is None or not len(ds.val.y):
        record = dict(NO_VAL)
    else:
        probs = evaluate_arrays(s.eval_step, params, rest, s.mesh, ds.val.x, ds.val.y, batch_size, with_probs=True)[2]
        record = calibrate(probs, ds.val.y)
    if run_dir is not None:  # None: a process of a multi-process job that writes nothing
        write_calibration(run_dir, record)
    return record


def _best_state(run_dir: Path, loop: Loop, state, progress):
    """The best epoch's state (what we test and keep, as Keras' `restore_best_weights`); the last
    epoch's, with a note, when best.msgpack is gone or unreadable."""
    best = rundir.checkpoint_file(run_dir, "best")
    try:
        _, arrays = checkpoint.load(best)
        return checkpoint.unflatten_into(state, arrays, str(best))
    except CnnError as e:
        progress.note(f"note: {e}; testing the last epoch ({loop.epoch}) instead of the best ({loop.best_epoch})")
        return state
