"""Before the first epoch: the options resolved against the data and the machine, once.

`prepare` loads the data set, builds the model (its pretrained or source-run weights, its frozen
prefix), chooses the precision and whether oneDNN's kernels run (both timed here: tuner.py), fits
the epochs into `--time-budget`, and returns a `Setup`: the resolved configuration, which nothing
changes afterwards, with everything the epochs need.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ..checks import check_tta_shift, scale_list, seed_value
from ..errors import CnnError
from ..runs import rundir
from ..runs.infer import make_eval_step
from . import prefix
from .budget import epochs_within_budget, validation_seconds
from .evaluation import eval_batch_size
from .config import TrainConfig, augment_list, crop_pad
from .feed import Feeder, mesh as make_mesh
from .optim import DEFAULT_LR, make_optimizer, norm_bias_mask
from .step import TrainState, make_train_step, split, zero_metrics
from .transfer import first_trained_layer, init_from, load_pretrained, pretrained_normalization, trainable_mask

# airbench estimates its 2x2x3 patch covariance (12x12) from 5,000 images (4.8M patches).
DATA_INIT_IMAGES = 5000


@dataclass
class Setup:
    """A run ready to train: `cfg` as resolved (precision, epochs, provenance), never changed after."""

    cfg: TrainConfig
    ds: object  # data.Dataset; with a cached frozen prefix, its outputs instead of images
    model: object
    binary: bool
    mean: tuple
    std: tuple
    seed: int
    mesh: object
    batch_size: int
    steps_per_epoch: int
    feeder: Feeder
    state: TrainState  # the initial state (a resumed run replaces it with its checkpoint's)
    train_step: object
    eval_step: object
    budget_seconds: float  # spent timing the step for --time-budget: part of training's time
    budget_minutes: float  # the --time-budget the epochs were planned for here (0: none, or a resumed run)

    @property
    def replicated(self):
        return NamedSharding(self.mesh, P())


def prepare(cfg: TrainConfig, progress, resume: Path | None = None) -> Setup:
    """Resolve `cfg` into a `Setup`: for a new run, or for the run in `resume` (its weights then come
    from its checkpoint, and its epochs from its config.json)."""
    fresh = resume is None or not rundir.checkpoint_file(resume, "last").is_file()
    seed = seed_value(cfg.seed)  # config.json keeps the seed as typed
    ds = _dataset(cfg, seed, progress)
    model, binary, mean, std = _model(cfg, ds, seed, fresh, progress)
    first_trained = first_trained_layer(model, cfg.freeze)
    cached = prefix.cacheable(cfg, first_trained)
    if cached:  # the frozen layers run once per image and view, not once per epoch (train/prefix.py)
        ds = prefix.dataset(ds, model, first_trained, mean, std, prefix.views(cfg))
        progress.note(f"layers 0-{first_trained - 1} frozen: their outputs computed once; training runs "
                      f"layers {first_trained} and up on them")
    # Pretrained BatchNorm layers keep the statistics of the data they learnt on (Keras' advice for
    # fine-tuning): a batch of 32 photos is a noisy estimate of them.
    gtrain, geval, params, rest = split(model, keep_statistics=bool(cfg.pretrained), frozen=first_trained,
                                        start=first_trained if cached else 0)
    mesh = make_mesh()
    bs, steps_per_epoch = _batch(cfg.batch_size, len(ds.train.y), mesh.size, progress)
    if cfg.init_from:
        params, rest, note = init_from(cfg.init_from, params, rest, ds.classes, binary)
        progress.note(note)
    trainable = trainable_mask(params, first_trained) if first_trained else None
    feeder = Feeder(mesh, ds.train.x, ds.train.y)

    # The steps timed below get the run's own optimizer (its masks too: --bn-bias-lr and a frozen
    # prefix change its state's structure), over one step per "epoch" since only the speed counts.
    timing_tx = make_optimizer(cfg, 1, trainable, norm_bias_mask(model, params))
    timing = (gtrain, timing_tx, params, rest, binary, mean, std, bs, ds.shape, len(ds.classes))
    if cfg.precision == "auto":
        cfg = dataclasses.replace(cfg, precision=_auto_precision(cfg, cached, timing, progress))
    use_kernels = cached or _kernels_choice(cfg, *timing)

    def build(cfg):
        """The initial state and the jitted step (the optimizer's schedule spans cfg.epochs)."""
        tx = make_optimizer(cfg, steps_per_epoch, trainable, norm_bias_mask(model, params))
        state = TrainState(params, rest, tx.init(params), jax.tree.map(lambda p: p.copy(), params) if cfg.ema else None)
        step = make_train_step(gtrain, tx, binary=binary, mean=mean, std=std,
                               augment_ops=tuple(augment_list(cfg.augment)), smoothing=cfg.label_smoothing,
                               ema_decay=cfg.ema, precision=cfg.precision, seed=seed, gather=feeder.resident,
                               steps_per_epoch=steps_per_epoch, use_kernels=use_kernels, features=cached)
        return state, step

    state, train_step = build(cfg)
    eval_step = make_eval_step(geval, binary=binary, mean=mean, std=std, tta_flip=cfg.tta_flip,
                               tta_shift=cfg.tta_shift, tta_scales=scale_list(cfg.tta_scales), features=cached)
    budget_seconds = 0.0
    if cfg.time_budget and resume is None:
        def validate():  # an epoch's validation pass, as the epochs run it (epochs._end_epoch)
            return validation_seconds(eval_step, state.params, state.rest, mesh, ds.val.x, ds.val.y,
                                      eval_batch_size(bs)) if ds.val is not None else 0.0

        epochs, budget_seconds, note = epochs_within_budget(
            # A copy: the step donates its input, and the real run starts from these same arrays.
            cfg, train_step, jax.device_put(jax.tree.map(lambda a: a.copy(), state), NamedSharding(mesh, P())),
            feeder, bs, steps_per_epoch, validate)
        progress.note(note)
        if epochs != cfg.epochs:  # config.json records them; a resumed run keeps them
            cfg = dataclasses.replace(cfg, epochs=epochs)
            state, train_step = build(cfg)
    cfg = dataclasses.replace(cfg, extra=_provenance(cfg, mesh, steps_per_epoch, bs))
    return Setup(cfg, ds, model, binary, mean, std, seed, mesh, bs, steps_per_epoch, feeder, state, train_step,
                 eval_step, budget_seconds, cfg.time_budget if resume is None else 0.0)


def _model(cfg: TrainConfig, ds, seed: int, fresh: bool, progress):
    """(model, binary head?, mean, std): the registry's network, its weights set for a fresh run (from
    the data, then the pretrained file), and the normalisation its inputs get."""
    from ..models import create_model, get_arch

    c = ds.shape[-1]
    mean, std = (ds.mean, ds.std) if cfg.normalize == "standard" else ((0.0,) * c, (1.0,) * c)
    if cfg.pretrained:  # the weights learnt on inputs normalised their way
        mean, std = pretrained_normalization(cfg.arch, cfg.pretrained, c)
    model = create_model(cfg.arch, ds.shape, len(ds.classes), activation=cfg.activation, dropout=cfg.dropout, seed=seed)
    binary = get_arch(cfg.arch).binary_head and len(ds.classes) == 2
    if fresh:  # a resumed run has them in its checkpoint (2 s saved for airbench94)
        _init_from_data(model, ds.train.x, mean, std, seed)
        if cfg.pretrained:
            progress.note(load_pretrained(model, cfg.arch, cfg.pretrained, cfg.weights, len(ds.classes)))
    return model, binary, mean, std


def _dataset(cfg: TrainConfig, seed: int, progress):
    """The data set, with the options that depend on its image size checked against it."""
    from ..data import load_dataset

    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size, val_split=cfg.val_split,
                      limit=cfg.limit, balance=cfg.balance, seed=seed, fit=cfg.fit)
    if ds.info.get("note"):
        progress.note(f"note: {ds.info['note']}")
    check_tta_shift(cfg.tta_shift, ds.shape)
    side = min(ds.shape[:2])
    pad = crop_pad(augment_list(cfg.augment))
    if pad >= side:
        raise CnnError(f"--augment's crop pads {pad} px, too many for {ds.shape[0]}x{ds.shape[1]} images "
                       f"(at most {side - 1} px)")
    return ds


def _batch(bs: int, n_train: int, devices: int, progress) -> tuple[int, int]:
    """(batch size, steps per epoch): the batch split evenly over the devices, lowered for a tiny set."""
    if bs % devices:
        raise CnnError(f"--batch-size {bs} is not divisible by the {devices} devices")
    if n_train < bs:
        bs = max(devices, n_train // devices * devices)
        progress.note(f"only {n_train} training images: batch size lowered to {bs}")
    return bs, n_train // bs


def _init_from_data(model, x_train, mean, std, seed: int) -> None:
    """Layers set from the data before training (airbench94's whitening conv) see a random sample of
    the normalized training images. --init-from then copies the source run's where the shapes match."""
    layers = [m for _, m in nnx.iter_graph(model) if hasattr(m, "init_from_data")]
    if layers:
        idx = np.random.default_rng(seed).permutation(len(x_train))[:DATA_INIT_IMAGES]
        x = (x_train[np.sort(idx)].astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
        for layer in layers:
            layer.init_from_data(x)


def _auto_precision(cfg, cached: bool, timing: tuple, progress) -> str:
    """`--precision auto`: bf16 where the CPU has bf16 arithmetic and this train step, timed here in
    both precisions on a synthetic batch (once per host, model, input and batch; the tuner's cache),
    is faster in it."""
    from ..precision import NAMES, resolve

    if cached:  # its steps take features: _synthetic's images would not fit
        progress.note("precision: fp32 (above a cached frozen prefix, not measured)")
        return "fp32"
    gtrain, tx, params, rest, binary, mean, std, bs, shape, num_classes = timing
    inputs = _synthetic(tx, params, rest, bs, shape, num_classes)
    augment_ops = tuple(augment_list(cfg.augment))
    steps = {p: make_train_step(gtrain, tx, binary=binary, mean=mean, std=std, augment_ops=augment_ops,
                                precision=p, seed=seed_value(cfg.seed), jit=False) for p in NAMES}
    key = (cfg.arch, tuple(shape), bs, num_classes, augment_ops)
    precision, why = resolve("auto", key, steps, inputs)
    progress.note(f"precision: {precision} ({why})")
    return precision


def _kernels_choice(cfg, gtrain, tx, params, rest, binary, mean, std, bs, shape, num_classes) -> bool:
    """Whether this train step runs its ops' oneDNN choices: the whole step timed both ways
    (tuner.kernels_in_step), once per host, model, input, batch and precision."""
    from .. import tuner

    inputs = _synthetic(tx, params, rest, bs, shape, num_classes)
    augment_ops = tuple(augment_list(cfg.augment))

    def step(use_kernels):
        return make_train_step(gtrain, tx, binary=binary, mean=mean, std=std, augment_ops=augment_ops,
                               precision=cfg.precision, seed=seed_value(cfg.seed), jit=False, use_kernels=use_kernels)

    return tuner.kernels_in_step((cfg.arch, tuple(shape), bs, num_classes, augment_ops, cfg.precision), step, inputs)


def _synthetic(tx, params, rest, bs, shape, num_classes):
    """inputs(): a train step's arguments on a random batch, for timing it."""
    def inputs():
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (bs, *shape), dtype=np.uint8)
        y = rng.integers(0, num_classes, bs).astype(np.int32)
        state = TrainState(params, rest, tx.init(params), None)
        return state, zero_metrics(), x, y, np.arange(bs, dtype=np.int32), np.int32(0)

    return inputs


def data_record(setup: Setup) -> dict:
    """config.json's "data": what rebuilds the model's input and preprocessing."""
    ds = setup.ds
    return {
        "name": ds.name, "classes": list(ds.classes), "input_shape": list(ds.shape),
        "mean": list(setup.mean), "std": list(setup.std), "fingerprint": ds.fingerprint,
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
