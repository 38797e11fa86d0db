"""The training loop: data in, a run directory out. Every command that trains goes through `fit`.

Per epoch: a seeded permutation, batches gathered on the host by a background thread and put on
the devices (sharded over the batch axis) while the previous step runs, one jitted step per batch,
metric sums read back once per progress refresh, then validation, history, checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from .. import __version__
from ..calibrate import NO_VAL, calibrate, summary_line
from ..calibrate import write as write_calibration
from ..errors import CnnError
from ..faultpoints import point
from ..fsutil import write_json
from ..tables import sig
from . import checkpoint, prefix, rundir
from .config import TrainConfig, augment_list, crop_pad, scale_list, seed_value
from .optim import DEFAULT_LR, learning_rate, make_optimizer, norm_bias_mask
from .budget import epochs_within_budget
from .feed import Feeder, mesh as make_mesh, order, put
from .logs import EpochLog
from .progress import Progress
from .step import TrainState, make_eval_step, make_train_step, split, zero_metrics
from .transfer import first_trained_layer, init_from, load_pretrained, pretrained_normalization, trainable_mask



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


def evaluate_arrays(eval_step, params, rest, mesh, x, y, batch_size: int, with_probs: bool = False):
    """(loss, accuracy) over a whole split, in padded fixed-size batches; with `with_probs`, also the
    class probabilities (N, K) as a third item (calibration fits its temperature on them)."""
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    bs = min(batch_size, _round_up(n, mesh.size))
    bs = _round_up(bs, mesh.size)
    sums = []
    for i in range(0, n, bs):
        xb, yb = np.asarray(x[i : i + bs]), np.asarray(y[i : i + bs], np.int32)
        m = len(xb)
        w = np.ones(bs, np.float32)
        if m < bs:
            pad = bs - m
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, np.int32)])
            w[m:] = 0.0
        sums.append(eval_step(params, rest, put(mesh, xb), put(mesh, yb), put(mesh, w)))
    loss, correct = np.sum(jax.device_get([s[:2] for s in sums]), axis=0, dtype=np.float64)  # one host sync
    if with_probs:
        return float(loss) / n, float(correct) / n, np.concatenate([_host(s[2]) for s in sums])[:n]
    return float(loss) / n, float(correct) / n


def _host(a) -> np.ndarray:
    """A batch-sharded array on the host: with several processes, every process's rows."""
    if a.is_fully_addressable:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


# airbench estimates its 2x2x3 patch covariance (12x12) from 5,000 images (4.8M patches).
DATA_INIT_IMAGES = 5000


def _init_from_data(model, x_train, mean, std, seed: int) -> None:
    """Layers set from the data before training (airbench94's whitening conv) see a random sample of
    the normalized training images. --init-from then copies the source run's where the shapes match."""
    layers = [m for _, m in nnx.iter_graph(model) if hasattr(m, "init_from_data")]
    if layers:
        idx = np.random.default_rng(seed).permutation(len(x_train))[:DATA_INIT_IMAGES]
        x = (x_train[np.sort(idx)].astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
        for layer in layers:
            layer.init_from_data(x)


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
    from .. import plots
    from ..data import load_dataset
    from ..models import create_model, get_arch

    seed = seed_value(cfg.seed)  # config.json keeps the seed as typed
    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, val_split=cfg.val_split,
                      limit=cfg.limit, balance=cfg.balance, seed=seed, fit=cfg.fit)
    if ds.info.get("note"):
        progress.note(f"note: {ds.info['note']}")
    num_classes = len(ds.classes)
    if cfg.tta_shift and 2 * cfg.tta_shift >= min(ds.shape[:2]):
        raise CnnError(f"--tta-shift {cfg.tta_shift} is too large for {ds.shape[0]}x{ds.shape[1]} images "
                       f"(at most {(min(ds.shape[:2]) - 1) // 2} px)")
    pad = crop_pad(augment_list(cfg.augment))
    if pad >= min(ds.shape[:2]):
        raise CnnError(f"--augment's crop pads {pad} px, too many for {ds.shape[0]}x{ds.shape[1]} images "
                       f"(at most {min(ds.shape[:2]) - 1} px)")
    c = ds.shape[-1]
    mean, std = (ds.mean, ds.std) if cfg.normalize == "standard" else ((0.0,) * c, (1.0,) * c)
    if cfg.pretrained:  # the weights learnt on inputs normalised their way
        mean, std = pretrained_normalization(cfg.arch, cfg.pretrained, c)
    model = create_model(cfg.arch, ds.shape, num_classes, activation=cfg.activation, dropout=cfg.dropout, seed=seed)
    binary = get_arch(cfg.arch).binary_head and num_classes == 2
    last = None if resume is None else Path(resume) / "checkpoints" / "last.msgpack"
    if last is None or not last.is_file():  # a resumed run has them in its checkpoint (2 s saved for airbench94)
        _init_from_data(model, ds.train.x, mean, std, seed)
        if cfg.pretrained:
            progress.note(load_pretrained(model, cfg.arch, cfg.pretrained, cfg.weights, num_classes))
    # Pretrained BatchNorm layers keep the statistics of the data they learnt on (Keras' advice for
    # fine-tuning): a batch of 32 photos is a noisy estimate of them.
    first_trained = first_trained_layer(model, cfg.freeze)
    cached = prefix.cacheable(cfg, first_trained)
    if cached:  # the frozen layers run once per image and view, not once per epoch (train/prefix.py)
        ds = prefix.dataset(ds, model, first_trained, mean, std, prefix.views(cfg))
        progress.note(f"layers 0-{first_trained - 1} frozen: their outputs computed once; training runs "
                      f"layers {first_trained} and up on them")
    gtrain, geval, params, rest = split(model, keep_statistics=bool(cfg.pretrained), frozen=first_trained,
                                        start=first_trained if cached else 0)

    mesh = make_mesh()
    n_train = len(ds.train.y)
    bs = cfg.batch_size
    if bs % mesh.size:
        raise CnnError(f"--batch-size {bs} is not divisible by the {mesh.size} devices")
    if n_train < bs:
        bs = max(mesh.size, n_train // mesh.size * mesh.size)
        progress.note(f"only {n_train} training images: batch size lowered to {bs}")
    steps_per_epoch = n_train // bs

    if cfg.init_from:
        params, rest, note = init_from(cfg.init_from, params, rest, ds.classes, binary)
        progress.note(note)
    trainable = trainable_mask(params, first_trained) if first_trained else None
    replicated = NamedSharding(mesh, P())
    feeder = Feeder(mesh, ds.train.x, ds.train.y)

    if cfg.precision == "auto" and cached:  # its steps take features: _synthetic's images would not fit
        cfg.precision = "fp32"
        progress.note("precision: fp32 (above a cached frozen prefix, not measured)")
    elif cfg.precision == "auto":
        cfg.precision, why = _auto_precision(cfg, gtrain, params, rest, binary, mean, std, bs, ds.shape, num_classes)
        progress.note(f"precision: {cfg.precision} ({why})")
    use_kernels = cached or _kernels_choice(cfg, gtrain, params, rest, binary, mean, std, bs, ds.shape, num_classes)

    def build():
        """The optimizer (its schedule spans cfg.epochs), the initial state and the jitted step."""
        tx = make_optimizer(cfg, steps_per_epoch, trainable, norm_bias_mask(model, params))
        state = TrainState(params, rest, tx.init(params), jax.tree.map(lambda p: p.copy(), params) if cfg.ema else None)
        step = make_train_step(gtrain, tx, binary=binary, mean=mean, std=std,
                               augment_ops=tuple(augment_list(cfg.augment)), smoothing=cfg.label_smoothing,
                               ema_decay=cfg.ema, precision=cfg.precision, seed=seed, gather=feeder.resident,
                               steps_per_epoch=steps_per_epoch, use_kernels=use_kernels, features=cached)
        return state, step

    state, train_step = build()
    calibration_seconds = 0.0
    if cfg.time_budget and resume is None:
        epochs, calibration_seconds, note = epochs_within_budget(
            # A copy: the step donates its input, and the real run starts from these same arrays.
            cfg, train_step, jax.device_put(jax.tree.map(lambda a: a.copy(), state), replicated), feeder, bs,
            steps_per_epoch)
        progress.note(note)
        if epochs != cfg.epochs:
            cfg.epochs = epochs  # config.json records them; a resumed run keeps them
            state, train_step = build()

    run_dir, lock, loop, state = _open_run(cfg, resume, lock, state, lambda: _data_record(ds, mean, std),
                                           lambda: _provenance(cfg, mesh, steps_per_epoch, bs), progress, writer)
    best_kept = None  # the best epoch's state on the host, for processes that write no checkpoint
    try:
        state = jax.device_put(state, replicated)
        loop.train_seconds += calibration_seconds  # timing the step is part of training
        eval_step = make_eval_step(geval, binary=binary, mean=mean, std=std, tta_flip=cfg.tta_flip,
                                    tta_shift=cfg.tta_shift, tta_scales=scale_list(cfg.tta_scales), features=cached)
        lr_at = learning_rate(cfg, steps_per_epoch)
        lr_at = lr_at if callable(lr_at) else (lambda _s, v=lr_at: v)
        eval_bs = max(256, bs)

        def save(which: str):
            meta = {"loop": loop.__dict__, "use_ema": bool(cfg.ema), "arch": cfg.arch}
            if writer:
                checkpoint.save(run_dir / "checkpoints" / f"{which}.msgpack", state, meta)

        schedule = _schedule_curve(lr_at, cfg.epochs, steps_per_epoch)

        def plot():
            if writer:
                plots.curves(loop.history, run_dir / "curves.png", f"{cfg.arch} on {Path(cfg.dataset).name}",
                             best_epoch=loop.best_epoch, schedule=schedule)

        last_plot = time.monotonic()
        interrupted = _Interrupt()
        logs = EpochLog(run_dir, loop.epoch + 1) if writer else contextlib.nullcontext()
        with interrupted, progress.session(cfg.epochs, steps_per_epoch, start_epoch=loop.epoch), logs as epoch_log:
            while not _trained(cfg, loop):
                epoch = loop.epoch + 1
                t0 = time.monotonic()
                metrics = jax.device_put(zero_metrics(), replicated)
                sums_before = np.array(loop.partial, np.float64)
                progress.start_epoch(epoch, loop.step_in_epoch)
                last_refresh = time.monotonic()
                step_in_epoch = loop.step_in_epoch
                for batch in feeder.epoch(order(seed, epoch, n_train), bs, loop.step_in_epoch):
                    state, metrics = train_step(state, metrics, *batch, np.int32(loop.global_step))
                    loop.global_step += 1
                    step_in_epoch += 1
                    if interrupted.hit or time.monotonic() - last_refresh > 0.5 or step_in_epoch == steps_per_epoch:
                        sums, bad = jax.device_get(metrics)
                        if math.isfinite(bad):
                            _nan_stop(epoch, int(bad) - (loop.global_step - step_in_epoch) + 1, run_dir)
                        tot = sums_before + sums
                        progress.update(step_in_epoch, tot[0] / max(tot[2], 1), tot[1] / max(tot[2], 1),
                                        tot[2] - sums_before[2], time.monotonic() - t0)
                        last_refresh = time.monotonic()
                        if interrupted.hit:
                            loop.step_in_epoch = step_in_epoch
                            loop.partial = tot.tolist()
                            loop.train_seconds += time.monotonic() - t0
                            save("last")
                            if loop.history:
                                plot()
                            raise KeyboardInterruptSaved(run_dir)
                sums = sums_before + np.asarray(jax.device_get(metrics[0]), np.float64)
                train_loss, train_acc = sums[0] / max(sums[2], 1), sums[1] / max(sums[2], 1)
                eval_params = state.ema if cfg.ema else state.params
                val_loss = val_acc = None
                if ds.val is not None and len(ds.val.y):
                    val_loss, val_acc = evaluate_arrays(eval_step, eval_params, state.rest, mesh, ds.val.x, ds.val.y, eval_bs)
                seconds = time.monotonic() - t0
                loop.train_seconds += seconds
                row = {
                    "epoch": epoch, "train_loss": round(float(train_loss), 6), "train_accuracy": round(float(train_acc), 6),
                    "val_loss": None if val_loss is None else round(val_loss, 6),
                    "val_accuracy": None if val_acc is None else round(val_acc, 6),
                    "lr": sig(float(lr_at(loop.global_step - 1)), 7), "seconds": round(seconds, 3),
                    "elapsed_seconds": round(loop.train_seconds, 3),
                    "images_per_s": round((sums[2] - sums_before[2]) / seconds, 1),
                }
                loop.history.append(row)
                loop.epoch, loop.step_in_epoch, loop.partial = epoch, 0, [0.0, 0.0, 0.0]
                improved = _improved(cfg.monitor, row, loop.best_value)
                if improved:
                    loop.best_epoch, loop.best_value = epoch, row[cfg.monitor] if row[cfg.monitor] is not None else None
                    loop.bad_epochs = 0
                else:
                    loop.bad_epochs += 1
                if writer:
                    rundir.write_history(run_dir, loop.history)
                if improved:  # best before last: a run whose `last` exists always has the best it names
                    save("best")
                    best_kept = None if writer else jax.device_get(state)
                save("last")
                if writer:
                    epoch_log.write(loop.history)  # after the checkpoint: a logged epoch is never trained again
                point("epoch-saved")
                progress.end_epoch(row)
                if time.monotonic() - last_plot > 30:  # a plot costs ~0.5 s: refresh it twice a minute at most
                    plot()
                    last_plot = time.monotonic()
                if cfg.early_stopping and loop.bad_epochs >= cfg.early_stopping:
                    progress.note(f"early stopping: no better {cfg.monitor} for {cfg.early_stopping} epochs; "
                                  f"restoring epoch {loop.best_epoch}")
        if interrupted.hit:  # Ctrl-C during the last epoch's validation: stop before testing
            raise KeyboardInterruptSaved(run_dir, trained=True)
        try:
            point("test-evaluation")
            plot()
            best_state = best_kept or _best_state(run_dir, loop, jax.device_get(state), progress)
            best_params = best_state.ema if cfg.ema else best_state.params
            test_loss = test_acc = None
            if ds.test is not None and len(ds.test.y):
                test_loss, test_acc = evaluate_arrays(eval_step, best_params, best_state.rest, mesh, ds.test.x,
                                                      ds.test.y, eval_bs)
            calibration = _calibrate(eval_step, best_params, best_state.rest, mesh, ds, eval_bs,
                                     run_dir if writer else None)
        except KeyboardInterrupt:  # every epoch is saved: what is left is the test evaluation
            raise KeyboardInterruptSaved(run_dir, trained=True) from None
        progress.note(summary_line(calibration))
        steady = [r["images_per_s"] for r in loop.history[1:]] or [r["images_per_s"] for r in loop.history]
        summary = {
            "run_dir": str(run_dir),
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
        if writer:
            write_json(run_dir / "metrics.json", summary)
        return summary
    finally:
        if resume is None and lock is not None:
            lock.release()


def _schedule_curve(lr_at, epochs: int, steps_per_epoch: int, points: int = 400):
    """(epoch positions, learning rates) of the whole schedule, for curves.png; step s ends at (s+1)/steps."""
    steps = np.unique(np.linspace(0, max(epochs * steps_per_epoch - 1, 0), points).round().astype(np.int64))
    # Optax schedules are elementwise: one call for all the points (a constant rate is broadcast).
    lrs = np.broadcast_to(np.asarray(lr_at(jax.numpy.asarray(steps)), np.float64), steps.shape)
    return (steps + 1) / steps_per_epoch, lrs.tolist()


def _calibrate(eval_step, params, rest, mesh, ds, batch_size: int, run_dir: Path | None) -> dict:
    """Fit the temperature and the unsure threshold on the validation split (see calibrate.py) and
    write calibration.json; without a validation split: temperature 1, no threshold."""
    if ds.val is None or not len(ds.val.y):
        record = dict(NO_VAL)
    else:
        probs = evaluate_arrays(eval_step, params, rest, mesh, ds.val.x, ds.val.y, batch_size, with_probs=True)[2]
        record = calibrate(probs, ds.val.y)
    if run_dir is not None:  # None: a process of a multi-process job that writes nothing
        write_calibration(run_dir, record)
    return record


def _open_run(cfg: TrainConfig, resume: Path | None, lock, state, data_record, provenance, progress, writer):
    """(run directory, its lock, loop, state): a new run directory (locked) with its config.json, or
    the resumed one (locked by the caller) with the state and loop of its last checkpoint (a fresh
    start if it has none). A process that does not write gets no directory of a new run."""
    if not writer:
        last = None if resume is None else Path(resume) / "checkpoints" / "last.msgpack"
        if last is None or not last.is_file():
            return resume, None, Loop(), state
        meta, arrays = checkpoint.load(last)
        return resume, None, _loop_from(meta, last), checkpoint.unflatten_into(state, arrays, str(last))
    try:
        loop = Loop()
        if resume is not None:
            run_dir = Path(resume)
            last = run_dir / "checkpoints" / "last.msgpack"
            if last.is_file():
                meta, arrays = checkpoint.load(last)
                state = checkpoint.unflatten_into(state, arrays, str(last))
                loop = _loop_from(meta, last)
                if _trained(cfg, loop) and (run_dir / "metrics.json").is_file():
                    raise CnnError(f"{run_dir} already finished its {cfg.epochs} epochs; pass --epochs N to train longer")
                _derive_best(run_dir, loop, progress)
            else:  # killed before its first epoch was saved
                progress.note(f"{run_dir} has no checkpoint yet: training it from the start")
            record = rundir.read_config(run_dir)
            if record["epochs"] != cfg.epochs:  # `--resume DIR --epochs N` extends the run
                _retire_metrics(run_dir, record["epochs"])
                write_json(run_dir / "config.json", record | {"epochs": cfg.epochs})
            if _trained(cfg, loop):
                progress.note(f"resuming {run_dir}: training is complete; testing the best epoch")
            else:
                progress.note(f"resuming {run_dir} at epoch {loop.epoch + 1}, step {loop.step_in_epoch}")
        else:
            run_dir = rundir.new_run_dir(cfg.out, cfg.name or f"{cfg.arch}-{Path(cfg.dataset).name}")
            lock = rundir.claim(run_dir)
            cfg.extra = provenance()
            record = cfg.to_dict() | {"data": data_record(), "cnn_version": __version__}
            write_json(run_dir / "config.json", record)
        progress.note(f"run directory: {run_dir}")
        return run_dir, lock, loop, state
    except BaseException:
        if lock is not None and resume is None:
            lock.release()
        raise


def _auto_precision(cfg, gtrain, params, rest, binary, mean, std, bs, shape, num_classes) -> tuple[str, str]:
    """`--precision auto`: bf16 where the CPU has bf16 arithmetic and this train step, timed here in
    both precisions on a synthetic batch (once per host, model, input and batch; the tuner's cache),
    is faster in it."""
    from ..precision import NAMES, resolve

    tx, inputs = _synthetic(cfg, params, rest, bs, shape, num_classes)
    augment_ops = tuple(augment_list(cfg.augment))
    steps = {p: make_train_step(gtrain, tx, binary=binary, mean=mean, std=std, augment_ops=augment_ops,
                                precision=p, seed=seed_value(cfg.seed), jit=False) for p in NAMES}
    key = (cfg.arch, tuple(shape), bs, num_classes, augment_ops)
    return resolve("auto", key, steps, inputs)


def _kernels_choice(cfg, gtrain, params, rest, binary, mean, std, bs, shape, num_classes) -> bool:
    """Whether this train step runs its ops' oneDNN choices: the whole step timed both ways
    (tuner.kernels_in_step), once per host, model, input, batch and precision."""
    from .. import tuner

    tx, inputs = _synthetic(cfg, params, rest, bs, shape, num_classes)
    augment_ops = tuple(augment_list(cfg.augment))

    def step(use_kernels):
        return make_train_step(gtrain, tx, binary=binary, mean=mean, std=std, augment_ops=augment_ops,
                               precision=cfg.precision, seed=seed_value(cfg.seed), jit=False, use_kernels=use_kernels)

    return tuner.kernels_in_step((cfg.arch, tuple(shape), bs, num_classes, augment_ops, cfg.precision), step, inputs)


def _synthetic(cfg, params, rest, bs, shape, num_classes):
    """(optimizer, inputs()): a train step's arguments on a random batch, for timing it."""
    tx = make_optimizer(cfg, 1, None, None)

    def inputs():
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (bs, *shape), dtype=np.uint8)
        y = rng.integers(0, num_classes, bs).astype(np.int32)
        state = TrainState(params, rest, tx.init(params), None)
        return state, zero_metrics(), x, y, np.arange(bs, dtype=np.int32), np.int32(0)

    return tx, inputs


class KeyboardInterruptSaved(CnnError):
    def __init__(self, run_dir: Path, trained: bool = False):
        what = ("training is complete and saved; the test evaluation was not run. Finish with"
                if trained else "checkpoint saved. Continue with")
        super().__init__(f"interrupted; {what}: cnn train --resume {run_dir}", exit_code=130)


def _trained(cfg: TrainConfig, loop: Loop) -> bool:
    """Whether the epochs are done: all of them, or early stopping ended the run."""
    return loop.epoch >= cfg.epochs or bool(cfg.early_stopping and loop.bad_epochs >= cfg.early_stopping)


def _loop_from(meta: dict, path: Path) -> Loop:
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
        for key in rundir.HISTORY_FIELDS[1:]:
            v = row.get(key)
            if v is not None and not (_number(v) or (isinstance(v, float) and math.isnan(v))):
                return f"history row {i + 1}: {key} is not a number: {v!r}"
    return None


def _retire_metrics(run_dir: Path, epochs: int) -> None:
    """An extended run's old test figures are kept as metrics.<N>-epochs.json: left as metrics.json,
    they said the run was finished while its new epochs were not (a Ctrl-C then printed a resume
    command that answered "already finished", #43)."""
    old = run_dir / "metrics.json"
    if old.is_file():
        os.replace(old, run_dir / f"metrics.{epochs}-epochs.json")


def _derive_best(run_dir: Path, loop: Loop, progress) -> None:
    """A `best` lost to a kill while it was first written is the `last` whose epoch it was."""
    ckpts = run_dir / "checkpoints"
    if loop.epoch and loop.best_epoch == loop.epoch and loop.step_in_epoch == 0 and not (ckpts / "best.msgpack").is_file():
        from ..fsutil import write_bytes

        write_bytes(ckpts / "best.msgpack", (ckpts / "last.msgpack").read_bytes())
        progress.note(f"note: best.msgpack was missing; epoch {loop.best_epoch} (the best) restored from last.msgpack")


def _best_state(run_dir: Path, loop: Loop, state, progress):
    """The best epoch's state (what we test and keep, as Keras' `restore_best_weights`); the last
    epoch's, with a note, when best.msgpack is gone or unreadable."""
    best = run_dir / "checkpoints" / "best.msgpack"
    try:
        _, arrays = checkpoint.load(best)
        return checkpoint.unflatten_into(state, arrays, str(best))
    except CnnError as e:
        progress.note(f"note: {e}; testing the last epoch ({loop.epoch}) instead of the best ({loop.best_epoch})")
        return state


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
    last = None if run_dir is None else run_dir / "checkpoints" / "last.msgpack"
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


def _data_record(ds, mean, std) -> dict:
    return {
        "name": ds.name, "classes": list(ds.classes), "input_shape": list(ds.shape),
        "mean": list(mean), "std": list(std), "fingerprint": ds.fingerprint,
        "sizes": {k: (0 if getattr(ds, k) is None else int(len(getattr(ds, k).y))) for k in ("train", "val", "test")},
    }


def _provenance(cfg, mesh, steps_per_epoch, bs) -> dict:
    import platform

    import flax
    import optax

    return {
        "resolved_lr": cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer],
        "effective_batch_size": bs,
        "steps_per_epoch": steps_per_epoch,
        "devices": [str(d) for d in mesh.devices.flat],
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
