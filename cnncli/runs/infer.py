"""Inference: what a trained network computes from uint8 images, in one place.

Pixels to [0, 1], the run's normalisation, the network in eval mode, the test-time views averaged,
class probabilities in fp32. The eval step of training and evaluation (`make_eval_step`), an export's
graph (`predictor`) and a loaded run (runs/run.py) all compute through `classify`; the calibration
temperature is applied after it (calibrate.apply, or in an export's graph).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ..precision import compute_dtype

EVAL_CHUNKS = (64, 128, 256)  # slice sizes of an inference batch to measure (`_eval_chunk`)


def to_unit(x):
    """uint8 NHWC -> float32 in [0, 1]."""
    return x.astype(jnp.float32) / 255.0


def normalize(x, mean, std):
    """Standardise a [0, 1] batch; `mean`/`std` are per channel (0 and 1 leave x/255 as the seeds had it)."""
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


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


def to_compute(params, dtype):
    """The params as the layers compute with them: bf16 copies for mixed precision (their gradients
    come back to the fp32 masters through the cast), unchanged in fp32."""
    if dtype == jnp.float32:
        return params
    return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


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


def classify(model, images, *, binary: bool, mean, std, dtype=jnp.float32, tta_flip: bool = False, tta_shift: int = 0,
             tta_scales=()):
    """(logits, probabilities) of uint8 NHWC `images`: normalised as in training, computed in `dtype`,
    probabilities averaged over the test-time views, in fp32."""
    x = normalize(to_unit(images), mean, std).astype(dtype)
    logits, probs = view_probabilities(model, x, binary, tta_flip, tta_shift, tta_scales)
    return logits, probs.astype(jnp.float32)


def predict_fn(model, binary: bool, mean, std, tta_flip: bool = False, tta_shift: int = 0, tta_scales=(),
               temperature: float = 1.0, dtype=None):
    """(predict(state, images) -> probabilities, the model's state): `classify` with the calibration
    temperature applied in the graph, computing in `dtype` (default float32): an export's function."""
    model.eval()
    graphdef, state = nnx.split(model)

    def predict(state, images):
        probs = classify(nnx.merge(graphdef, state), images, binary=binary, mean=mean, std=std, dtype=predict.dtype,
                         tta_flip=tta_flip, tta_shift=tta_shift, tta_scales=tta_scales)[1]
        if temperature != 1.0:  # calibrate.apply's softmax(log p / T), in the graph
            probs = jax.nn.softmax(jnp.log(jnp.clip(probs, 1e-12, 1.0)) / temperature, axis=-1)
        return probs

    predict.dtype = dtype or jnp.float32
    return predict, state


def make_eval_step(geval, *, binary, mean, std, tta_flip=False, tta_shift=0, tta_scales=(), precision="fp32",
                   features=False):
    """eval(params, rest, x_uint8, y, weight) -> (loss_sum, correct, probs). Padding rows have weight 0.
    In bf16 the layers compute as in training's mixed precision; probabilities and losses are fp32.
    `features=True`: x is a frozen prefix's outputs (N, views, ...), the mirror's view the flipped one."""
    dtype = compute_dtype(precision)

    def chunk_fn(params, rest, x, y):
        model = nnx.merge(geval, to_compute(params, dtype), rest, copy=True)
        if features:
            logits = model(x[:, 0].astype(dtype))
            probs = probabilities(logits, binary)
            if tta_flip:
                probs = (probs + probabilities(model(x[:, 1].astype(dtype)), binary)) / 2
        else:
            logits, probs = classify(model, x, binary=binary, mean=mean, std=std, dtype=dtype, tta_flip=tta_flip,
                                     tta_shift=tta_shift, tta_scales=tta_scales)
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
