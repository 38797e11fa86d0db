"""Training above a frozen prefix on its outputs, computed once.

With `--freeze N` the first N layers do not change, run in inference mode and pass no gradient
(`SeqNet.frozen`), so their output for an image is the same in every epoch. When no augmentation
changes an image from one epoch to the next but a mirror, that output is computed once per image
and view (the image, and its mirror when `flip` or `--tta-flip` asks for it) and training runs
layers N and up on it (`SeqNet.start`): an epoch of EfficientNet-Lite0 above its 13th layer costs the
last four blocks, not the network. The checkpoints hold every layer, so the run is an ordinary one
for evaluate, predict, export and serve. The linear probe of transfer learning (`--freeze features`)
is the case N = the head.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from ..runs.infer import normalize, to_unit
from .config import TrainConfig, augment_list

BATCH = 64  # images per forward pass of the prefix


def cacheable(cfg: TrainConfig, first: int) -> bool:
    """Whether layers [0, first) can be run once per image: frozen, and only mirroring varies an image."""
    return first > 0 and set(augment_list(cfg.augment)) <= {"flip"} and not cfg.tta_shift and not cfg.tta_scales


def views(cfg: TrainConfig) -> int:
    """1, or 2 when the mirror is needed (the flip augmentation, or flipped test-time views)."""
    return 2 if "flip" in augment_list(cfg.augment) or cfg.tta_flip else 1


def outputs(model, first: int, x_uint8: np.ndarray, mean, std, n_views: int, label: str) -> np.ndarray:
    """(N, n_views, ...) float32: layers [0, first) of `model` (inference mode) on each image and its mirror."""
    from ..console import task_progress
    from ..models.blocks import SeqNet

    prefix = SeqNet(list(model.layers)[:first], "prefix")
    prefix.eval()

    @nnx.jit
    def run(m, x):
        x = normalize(to_unit(x), mean, std)
        out = [m(x)] + ([m(jax.lax.rev(x, (2,)))] if n_views == 2 else [])
        return jax.numpy.stack(out, axis=1)

    n = len(x_uint8)
    shape = jax.eval_shape(run, prefix, jax.ShapeDtypeStruct((BATCH, *x_uint8.shape[1:]), np.uint8)).shape[1:]
    out = np.empty((n, *shape), np.float32)
    with task_progress(f"frozen layers 0-{first - 1} on the {label} images", n, "images", show_below=0) as advance:
        for i in range(0, n, BATCH):
            xb = np.asarray(x_uint8[i : i + BATCH])
            m = len(xb)
            if m < BATCH:  # one shape: one compiled program
                xb = np.concatenate([xb, np.zeros((BATCH - m, *xb.shape[1:]), xb.dtype)])
            out[i : i + m] = np.asarray(run(prefix, xb))[:m]
            advance(m)
    return out


def dataset(ds, model, first: int, mean, std, n_views: int):
    """`ds` with every split's images replaced by the frozen prefix's outputs (see `outputs`)."""
    def convert(split, label):
        if split is None:
            return None
        return dataclasses.replace(split, x=outputs(model, first, split.x, mean, std, n_views, label))

    return dataclasses.replace(ds, train=convert(ds.train, "training"), val=convert(ds.val, "validation"),
                               test=convert(ds.test, "test"))
