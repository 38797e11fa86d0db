"""Max and average pooling, forward and backward in measured forms (models/layers.py says why)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from .. import kernels, tuner
from .ops import _out_hw, _pick, _place, _random, _taps, _window_pads


# --- pooling -----------------------------------------------------------------------------------


def _pool_geometry(shape, window: int, stride: int, padding: str):
    """Output (H, W) and ((lo, hi), (lo, hi)) pads of a square pooling window, as XLA computes them."""
    pads = _window_pads(shape[1:3], (window, window), (stride, stride), padding)
    return _out_hw(shape, (window, window), (stride, stride), pads), pads


def _pool_xla(x, window, stride, padding):
    _, pads = _pool_geometry(x.shape, window, stride, padding)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), ((0, 0), *pads, (0, 0)))


def _pool_slices(x, window, stride, padding):
    """A maximum over shifted strided slices: the same values as `reduce_window`."""
    out_hw, pads = _pool_geometry(x.shape, window, stride, padding)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    out = None
    for _, _, tap in _taps(xp, (window, window), (stride, stride), out_hw):
        out = tap if out is None else jnp.maximum(out, tap)
    return out


def _pool_bwd_xla(x, out, g, window, stride, padding):
    """Autodiff of `reduce_window`: select-and-scatter (on the AVX2 EPYC slower than the network's
    largest convolution)."""
    return jax.vjp(lambda x: _pool_xla(x, window, stride, padding), x)[1](g)[0]


def _pool_bwd_place(x, out, g, window, stride, padding):
    """Each output's gradient to the first maximum of its window (row-major), like select-and-scatter,
    in one fused pass of compare-and-place."""
    out_hw, pads = _pool_geometry(x.shape, window, stride, padding)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    taken = jnp.zeros(out.shape, bool)
    dxp = jnp.zeros(xp.shape, g.dtype)
    for i, j, tap in _taps(xp, (window, window), (stride, stride), out_hw):
        hit = (tap == out) & ~taken
        taken = taken | hit
        dxp = dxp + _place(jnp.where(hit, g, jnp.zeros((), g.dtype)), i, j, (stride, stride), xp.shape[1:3])
    (top, _), (left, _) = pads
    return dxp[:, top : top + x.shape[1], left : left + x.shape[2], :]


def _pool_fwd_onednn(x, window, stride, padding):
    out_hw, pads = _pool_geometry(x.shape, window, stride, padding)
    return kernels.pool_fwd(x, 0, (window, window), out_hw, (stride, stride), pads)


def _pool_bwd_onednn(x, out, g, window, stride, padding):
    """oneDNN's max-pooling backward (it runs the forward again for the winners' positions)."""
    _, pads = _pool_geometry(x.shape, window, stride, padding)
    return kernels.pool_bwd(x, g, 0, (window, window), (stride, stride), pads)


def _pool_onednn_has(kind, x, window, stride, padding) -> bool:
    out_hw, pads = _pool_geometry(x.shape, window, stride, padding)
    return tuner.active() and kernels.fast(kernels.pool_geo(kind, x.dtype, x.shape, (window, window), out_hw,
                                                            (stride, stride), pads))


POOL_FWD = {"xla": _pool_xla, "slices": _pool_slices, "onednn": _pool_fwd_onednn}
POOL_BWD = {"xla": _pool_bwd_xla, "place": _pool_bwd_place, "onednn": _pool_bwd_onednn}


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
    name = _pick("maxpool_fwd", POOL_FWD,
                 lambda n: n != "onednn" or _pool_onednn_has(kernels.MAX_FWD, x, window, stride, padding),
                 [(x.shape, x.dtype)], window=window, stride=stride, padding=padding)
    return POOL_FWD[name](x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
    out = _max_pool(x, window, stride, padding)
    return out, (x, out)


def _max_pool_bwd(window, stride, padding, res, g):
    x, out = res
    # Timed on random data: `out` is then the real pooled maximum of it, so ties are as rare as in use.
    name = tuner.choose("maxpool_bwd", ((tuple(x.shape), x.dtype.name), window, stride, padding),
                        {n: functools.partial(f, window=window, stride=stride, padding=padding)
                         for n, f in POOL_BWD.items()
                         if n != "onednn" or _pool_onednn_has(kernels.MAX_BWD, x, window, stride, padding)},
                        lambda: _pool_bwd_inputs(x.shape, x.dtype, window, stride, padding))
    return (POOL_BWD[name](x, out, g, window, stride, padding),)


def _pool_bwd_inputs(shape, dtype, window, stride, padding):
    (x,) = _random([(shape, dtype)])
    out = _pool_xla(x, window, stride, padding)
    (g,) = _random([(out.shape, dtype)], seed=1)
    return x, out, g


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window: int = 2, stride: int = 2, padding: str = "VALID"):
    """Max pooling over NHWC `x`, forward and backward in their measured forms.

    Same values as `flax.nnx.max_pool(x, (window, window), (stride, stride), padding)`, and the same
    gradient (each window's gradient goes to its first maximum). "SAME" pads with -inf the way XLA
    does (extra padding at the end for an even window).
    """
    if tuner.is_plain():
        # flax's pool (reduce_window too), not `_pool_xla`: jax2onnx maps flax's to ONNX's MaxPool,
        # a bare reduce_window_max to a 4-D MaxPool that onnxruntime rejects.
        return nnx.max_pool(x, window_shape=(window, window), strides=(stride, stride), padding=padding)
    return _max_pool(x, window, stride, padding)


def _avg_slices(x, window, stride):
    """A mean of shifted strided slices (plain ops: autodiff's gradient is a sum of pads, no window
    reduction to differentiate)."""
    out_hw, _ = _pool_geometry(x.shape, window, stride, "VALID")
    total = 0.0
    for _, _, tap in _taps(x, (window, window), (stride, stride), out_hw):
        total = total + tap
    return total / (window * window)


def _avg_fwd_onednn(x, window, stride):
    out_hw, pads = _pool_geometry(x.shape, window, stride, "VALID")
    return kernels.pool_fwd(x, 1, (window, window), out_hw, (stride, stride), pads)


def _avg_bwd_slices(x, g, window, stride):
    return jax.vjp(lambda v: _avg_slices(v, window, stride), x)[1](g)[0]


def _avg_bwd_onednn(x, g, window, stride):
    _, pads = _pool_geometry(x.shape, window, stride, "VALID")
    return kernels.pool_bwd(x, g, 1, (window, window), (stride, stride), pads)


AVG_FWD = {"xla": _avg_slices, "onednn": _avg_fwd_onednn}
AVG_BWD = {"xla": _avg_bwd_slices, "onednn": _avg_bwd_onednn}


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _avg_pool(x, window, stride):
    name = _pick("avgpool_fwd", AVG_FWD, lambda n: _pool_onednn_has(kernels.AVG_FWD, x, window, stride, "VALID"),
                 [(x.shape, x.dtype)], window=window, stride=stride)
    return AVG_FWD[name](x, window, stride)


def _avg_pool_fwd(x, window, stride):
    return _avg_pool(x, window, stride), x


def _avg_pool_bwd(window, stride, x, g):
    name = _pick("avgpool_bwd", AVG_BWD, lambda n: _pool_onednn_has(kernels.AVG_BWD, x, window, stride, "VALID"),
                 [(x.shape, x.dtype), (g.shape, g.dtype)], window=window, stride=stride)
    return (AVG_BWD[name](x, g, window, stride),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def avg_pool(x, window: int = 2, stride: int = 2):
    """Average pooling (VALID) over NHWC `x`, forward and backward in their measured forms."""
    if tuner.is_plain():  # the slices index, which a symbolic batch (export) turns into a gather
        return nnx.avg_pool(x, window_shape=(window, window), strides=(stride, stride), padding="VALID")
    return _avg_pool(x, window, stride)
