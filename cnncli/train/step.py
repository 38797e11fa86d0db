"""The jitted train and eval steps (functional: `nnx.split` + `jax.jit`, 5-20% faster on CPU than `nnx.jit`).

State is a plain pytree: trainable params, the rest of the model state (BatchNorm statistics,
dropout RNG), the Optax state and an optional EMA of the params. Metrics are running sums that
stay on the device; the host reads them once per progress refresh.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from .augment import alternating_flip, augment, normalize, to_unit


EVAL_CHUNKS = (64, 128, 256)  # slice sizes of an inference batch to measure (`_eval_chunk`)


class TrainState(NamedTuple):
    params: Any
    rest: Any  # BatchNorm statistics, dropout RNG counters
    opt_state: Any
    ema: Any  # EMA of params (or None)


# Running sums: loss, correct, count, first non-finite step (+inf while none).
def zero_metrics():
    return jnp.zeros((3,), jnp.float32), jnp.array(jnp.inf, jnp.float32)


def split(model, keep_statistics: bool = False, frozen: int = 0, start: int = 0):
    """(train graphdef, eval graphdef, params, rest): the two graphdefs differ only in mode flags.

    `keep_statistics`: BatchNorm layers normalise with their running statistics in training too, and
    leave them as they are (pretrained ones). `frozen`: the first `frozen` layers (`--freeze`) run in
    inference mode in training too, and no gradient is traced through them (`SeqNet.frozen`).
    `start`: both graphs take layer `start`'s input (train/prefix.py: the frozen layers' outputs)."""
    model.train()
    if keep_statistics:
        for _, m in nnx.iter_graph(model):
            if isinstance(m, nnx.BatchNorm):
                m.use_running_average = True
    for layer in list(model.layers)[:frozen]:
        layer.eval()
    model.frozen, model.start = frozen, start
    gtrain, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    model.frozen = 0
    geval = nnx.graphdef(model)
    model.start = 0
    return gtrain, geval, params, rest


def per_example_loss(logits, y, binary: bool, smoothing: float = 0.0):
    """Cross-entropy per example and the predicted class; a one-unit head uses the sigmoid (BCE)."""
    logits = logits.astype(jnp.float32)
    if binary:
        z = logits[:, 0]
        target = y.astype(jnp.float32) * (1.0 - smoothing) + 0.5 * smoothing
        return optax.sigmoid_binary_cross_entropy(z, target), (z > 0).astype(jnp.int32)
    onehot = jax.nn.one_hot(y, logits.shape[-1])
    if smoothing:
        onehot = optax.smooth_labels(onehot, smoothing)
    return optax.softmax_cross_entropy(logits, onehot), jnp.argmax(logits, -1).astype(jnp.int32)


def probabilities(logits, binary: bool):
    """Class probabilities (N, K); a binary head's P(class 1) becomes [1 - p, p]."""
    logits = logits.astype(jnp.float32)
    if binary:
        # Not logits[:, 0]: with a symbolic batch (export) indexing becomes a gather, which TFLite cannot convert.
        p = jax.nn.sigmoid(jax.lax.index_in_dim(logits, 0, 1, keepdims=False))
        return jnp.stack([1.0 - p, p], axis=-1)
    return jax.nn.softmax(logits, -1)


def compute_dtype_of(precision: str):
    from ..precision import compute_dtype

    return compute_dtype(precision)


def to_compute(params, dtype):
    """The params as the layers compute with them: bf16 copies for mixed precision (their gradients
    come back to the fp32 masters through the cast), unchanged in fp32."""
    if dtype == jnp.float32:
        return params
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def make_train_step(gtrain, tx, *, binary, mean, std, augment_ops=(), smoothing=0.0, ema_decay=0.0,
                    precision="fp32", seed=0, gather=False, steps_per_epoch=1, jit=True, use_kernels=True,
                    features=False):
    """step(state, metrics, x_uint8, y, idx, step) -> (state, metrics). Jitted; state and metrics donated.

    `use_kernels=False`: traced with no oneDNN kernel offered (tuner.kernels_in_step decides).
    `features=True`: x is a frozen prefix's outputs (N, views, ...) (train/prefix.py), not images: each
    example takes its mirror's view at random under the flip augmentation, else the image's.

    `idx` are the images' positions in the training set. With `gather=True`:
    step(state, metrics, x_all, y_all, idx, step), the batch being x_all[idx].
    """
    base_key = jax.random.key(seed + 7919)
    flip_key = jax.random.key(seed + 104729)  # the same for every step: which half starts mirrored
    compute_dtype = compute_dtype_of(precision)

    def step_fn(state: TrainState, metrics, x, y, idx, step):
        if features:
            x = feature_view(jax.random.fold_in(base_key, step), x, "flip" in augment_ops).astype(compute_dtype)
        else:
            x = to_unit(x)
            if augment_ops:
                x = augment(jax.random.fold_in(base_key, step), x, augment_ops)
            if "altflip" in augment_ops:
                x = alternating_flip(flip_key, x, idx, step // steps_per_epoch)
            x = normalize(x, mean, std).astype(compute_dtype)

        def loss_fn(params, rest):
            params = to_compute(params, compute_dtype)  # mixed precision: fp32 master weights
            model = nnx.merge(gtrain, params, rest, copy=True)
            losses, pred = per_example_loss(model(x), y, binary, smoothing)
            _, _, new_rest = nnx.split(model, nnx.Param, ...)
            return losses.mean(), (losses, pred, new_rest)

        (loss, (losses, pred, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.rest)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)  # new params; the old buffers are donated
        ema = state.ema
        if ema_decay:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        sums, bad_step = metrics
        sums = sums + jnp.stack([losses.sum(), (pred == y).sum().astype(jnp.float32), float(y.shape[0])])
        bad_step = jnp.where(jnp.isfinite(loss) | jnp.isfinite(bad_step), bad_step, step.astype(jnp.float32))
        return TrainState(params, rest, opt_state, ema), (sums, bad_step)

    def gather_fn(state, metrics, x_all, y_all, idx, step):
        # Device-resident data (see feed.py): the batch is gathered inside the step.
        return step_fn(state, metrics, x_all[idx], y_all[idx], idx, step)

    fn = gather_fn if gather else step_fn
    if not use_kernels:
        from .. import kernels

        fn = kernels.without(fn)
    return jax.jit(fn, donate_argnums=(0, 1)) if jit else fn


def feature_view(key, x, flip: bool):
    """One view per example of cached prefix outputs (N, views, ...): the mirror's with probability 1/2
    under `flip` (when it was computed), else the image's."""
    if not flip or x.shape[1] == 1:
        return x[:, 0]
    mirrored = jax.random.bernoulli(key, 0.5, (x.shape[0],)).reshape((-1,) + (1,) * (x.ndim - 2))
    return jnp.where(mirrored, x[:, 1], x[:, 0])


def tta_views(x, flip: bool, shift: int, scales=()) -> list:
    """The test-time views of an NHWC batch: the image, copies shifted by +-`shift` px along each
    axis (edges reflected, as a crop of a slightly larger photo would show them), one view per share
    of `scales` (see zoomed_view), and with `flip` the mirror of each. AlexNet averaged 10 such views
    (5 crops, mirrored) for the same reason."""
    # lax's slice and rev, not indexing: with a symbolic batch (export) indexing becomes a gather.
    views = [x]
    if shift:
        h, w = x.shape[1:3]
        pad = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
        for dy, dx in ((-shift, 0), (shift, 0), (0, -shift), (0, shift)):
            rows = jax.lax.slice_in_dim(pad, shift + dy, shift + dy + h, axis=1)
            views.append(jax.lax.slice_in_dim(rows, shift + dx, shift + dx + w, axis=2))
    views += [zoomed_view(x, s) for s in scales]
    if flip:
        views += [jax.lax.rev(v, (2,)) for v in views]
    return views


def zoomed_view(x, share: float):
    """The image seen at another scale, at its own size: share < 1 shows the central `share` of each
    side enlarged (a subject small in its photo grows), share > 1 the whole image shrunk inside a
    reflected border of (share - 1) / 2 of the side each way (a close-up's subject shrinks)."""
    n, h, w, c = x.shape
    if share < 1:
        ch, cw = max(1, round(h * share)), max(1, round(w * share))
        top, left = (h - ch) // 2, (w - cw) // 2
        x = jax.lax.slice_in_dim(jax.lax.slice_in_dim(x, top, top + ch, axis=1), left, left + cw, axis=2)
    else:
        ph, pw = round(h * (share - 1) / 2), round(w * (share - 1) / 2)
        x = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")
    # jax.image.resize's own computation, over the two spatial axes named: resize compares every axis's
    # size, which a symbolic batch (export) cannot answer, and jax2onnx's resize takes fixed shapes only.
    scale = jnp.array([h / x.shape[1], w / x.shape[2]], jnp.float32)
    return jax.image.scale_and_translate(x, (n, h, w, c), (1, 2), scale, jnp.zeros(2, jnp.float32), "linear",
                                         antialias=True)


def view_probabilities(model, x, binary: bool, tta_flip: bool = False, tta_shift: int = 0, tta_scales=()):
    """(logits of `x`, class probabilities averaged over its test-time views): what evaluation,
    prediction and an export (export.py) compute from a normalised batch."""
    logits = model(x)
    probs = probabilities(logits, binary)
    views = tta_views(x, tta_flip, tta_shift, tta_scales)[1:]
    if views:  # average the probabilities over the test-time views (see tta_views)
        probs = (probs + sum(probabilities(model(v), binary) for v in views)) / (1 + len(views))
    return logits, probs


def make_eval_step(geval, *, binary, mean, std, tta_flip=False, tta_shift=0, tta_scales=(), precision="fp32",
                   features=False):
    """eval(params, rest, x_uint8, y, weight) -> (loss_sum, correct, probs). Padding rows have weight 0.
    In bf16 the layers compute as in training's mixed precision; probabilities and losses are fp32.
    `features=True`: x is a frozen prefix's outputs (N, views, ...), the mirror's view the flipped one."""
    dtype = compute_dtype_of(precision)

    def chunk_fn(params, rest, x, y):
        model = nnx.merge(geval, to_compute(params, dtype), rest, copy=True)
        if features:
            logits = model(x[:, 0].astype(dtype))
            probs = probabilities(logits, binary)
            if tta_flip:
                probs = (probs + probabilities(model(x[:, 1].astype(dtype)), binary)) / 2
        else:
            x = normalize(to_unit(x), mean, std).astype(dtype)
            logits, probs = view_probabilities(model, x, binary, tta_flip, tta_shift, tta_scales)
        losses = per_example_loss(logits, y, binary)[0]
        if tta_flip or tta_shift or tta_scales:
            losses = -jnp.log(jnp.clip(jnp.take_along_axis(probs, y[:, None], 1)[:, 0], 1e-7, 1.0))
        return losses, probs

    def chunked(c):
        def run(params, rest, x, y):
            parts = [chunk_fn(params, rest, x[i : i + c], y[i : i + c]) for i in range(0, x.shape[0], c)]
            return tuple(jnp.concatenate(t) for t in zip(*parts))
        return run

    def eval_fn(params, rest, x, y, w):
        losses, probs = chunked(_eval_chunk(chunked, params, rest, x, precision))(params, rest, x, y)
        correct = (jnp.argmax(probs, -1) == y).astype(jnp.float32)
        return (losses * w).sum(), (correct * w).sum(), probs

    return jax.jit(eval_fn)


def _eval_chunk(chunked, params, rest, x, precision) -> int:
    """Images per slice of an inference batch (the slices unrolled), as measured here: on the AVX2
    EPYC XLA:CPU's convolutions ran ~1.8x faster per image on 128-image slices than on one batch of
    1024. On several devices the batch is already split across them, so it stays whole."""
    from .. import tuner

    n = x.shape[0]
    sizes = [n] + [c for c in EVAL_CHUNKS if c < n and n % c == 0]
    if jax.device_count() > 1 or len(sizes) == 1:
        return n
    arrays = jax.tree.leaves((params, rest))
    key = (tuple(x.shape), precision, tuple((tuple(a.shape), a.dtype.name) for a in arrays))

    def inputs():  # zeros of the same shapes (a dropout's RNG key: a zero key): values do not change the speed
        def zeros(a):
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                data = jax.eval_shape(jax.random.key_data, a)
                return jax.random.wrap_key_data(jnp.zeros(data.shape, data.dtype), impl=jax.random.key_impl(a))
            return jnp.zeros(a.shape, a.dtype)

        return (jax.tree.map(zeros, params), jax.tree.map(zeros, rest), jnp.zeros(x.shape, x.dtype),
                jnp.zeros((n,), jnp.int32))

    return int(tuner.choose("eval_chunk", key, {str(c): chunked(c) for c in sizes}, inputs))
