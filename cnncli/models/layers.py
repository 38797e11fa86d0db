"""Layers expressed the way XLA:CPU runs them fastest; each is tested against the plain form.

Why this file exists (measured on the 2-core CPU, net1, batch 128; see `cnn bench`):
- The gradient of `reduce_window` max-pooling (select-and-scatter) costs more than the network's
  largest convolution. A maximum over shifted slices computes the same values, and a hand-written
  backward pass (one fused pass of compare-and-place) gives the same gradient.
- XLA:CPU computes a convolution's weight gradient as a convolution with a huge (output-sized)
  window, about 5 GFLOP/s for a 3x3 32->64 layer: 90% of a train step. The same sum written as
  im2col + one matmul runs about 6x faster. Forward and input gradient stay plain `lax` convs,
  which are already fast.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _window_pads(size: tuple[int, int], window: tuple[int, int], strides: tuple[int, int], padding):
    """Explicit ((lo, hi), (lo, hi)) pads for "SAME"/"VALID" or already explicit pads."""
    if isinstance(padding, str):
        return tuple(tuple(p) for p in lax.padtype_to_pads(size, window, strides, padding.upper()))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _taps(xp, window, strides, out_hw):
    """Yield (i, j, slice) for every window offset: the input pixels each output pixel sees there."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :]


# --- convolution -------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)


def _conv_fwd(x, kernel, strides, pads):
    return _conv(x, kernel, strides, pads), (x, kernel)


def _conv_bwd(strides, pads, res, dy):
    x, kernel = res
    _, input_vjp = jax.vjp(lambda x_: lax.conv_general_dilated(x_, kernel, strides, pads, dimension_numbers=_NHWC), x)
    return input_vjp(dy)[0], _conv_kernel_grad(x, dy, kernel.shape, strides, pads)


def _conv_kernel_grad(x, dy, kernel_shape, strides, pads):
    """d(loss)/d(kernel) as im2col + one matmul: patches (N*Ho*Wo, kh*kw*Cin)^T @ dy (N*Ho*Wo, Cout)."""
    kh, kw, cin, cout = kernel_shape
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    taps = [t for _, _, t in _taps(xp, (kh, kw), strides, dy.shape[1:3])]
    patches = jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * cin)
    grad = lax.dot_general(patches, dy.reshape(-1, cout), (((0,), (0,)), ((), ())))
    return grad.reshape(kh, kw, cin, cout)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x, kernel, bias=None, stride=1, padding="SAME"):
    """2-D convolution of NHWC `x` with an HWIO `kernel` (+ bias), fast gradients on XLA:CPU.

    Same values and gradients as `lax.conv_general_dilated(x, kernel, (stride, stride), padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias`.
    """
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pads = _window_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    y = _conv(x, kernel, strides, pads)
    return y if bias is None else y + bias


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for `lax.conv_general_dilated` (the hook `nnx.Conv` takes) using `conv2d`'s gradients.

    Only plain 2-D NHWC/HWIO convolutions (no dilation, no groups, non-negative padding) take the
    fast path; anything else goes to `lax.conv_general_dilated` unchanged.
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    pads = None if lhs.ndim != 4 else _window_pads(lhs.shape[1:3], rhs.shape[:2], tuple(window_strides), padding)
    plain = (
        lhs.ndim == 4
        and dn == _NHWC
        and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and min(min(p) for p in pads) >= 0
        and not any(v is not None for v in kwargs.values())
    )
    if not plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision, **kwargs)
    return _conv(lhs, rhs, tuple(window_strides), pads)


class Conv(nnx.Conv):
    """`nnx.Conv` (same arguments, parameters, initialisation, checkpoints) with `conv2d`'s fast gradients."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("conv_general_dilated", conv_general_dilated)
        super().__init__(*args, **kwargs)


# --- pooling -----------------------------------------------------------------------------------


def _pool_geometry(shape, window: int, stride: int, padding: str):
    """Output (H, W) and ((lo, hi), (lo, hi)) pads of a square pooling window, as XLA computes them."""
    pads = _window_pads(shape[1:3], (window, window), (stride, stride), padding)
    out = tuple((shape[1 + a] + sum(pads[a]) - window) // stride + 1 for a in range(2))
    return out, pads


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
    out_hw, pads = _pool_geometry(x.shape, window, stride, padding)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    out = None
    for _, _, tap in _taps(xp, (window, window), (stride, stride), out_hw):
        out = tap if out is None else jnp.maximum(out, tap)
    return out


def _max_pool_fwd(x, window, stride, padding):
    out = _max_pool(x, window, stride, padding)
    return out, (x, out)


def _max_pool_bwd(window, stride, padding, res, g):
    """Route each output's gradient to the first maximum of its window (row-major), like select-and-scatter."""
    x, out = res
    out_hw, pads = _pool_geometry(x.shape, window, stride, padding)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    hp, wp = xp.shape[1:3]
    taken = jnp.zeros(out.shape, bool)
    dxp = jnp.zeros_like(xp)
    zero = jnp.zeros((), g.dtype)
    for i, j, tap in _taps(xp, (window, window), (stride, stride), out_hw):
        hit = (tap == out) & ~taken
        taken = taken | hit
        # Place each output's share back at the input pixel it came from (interior padding = stride - 1).
        placed = lax.pad(
            jnp.where(hit, g, zero),
            zero,
            ((0, 0, 0), (i, hp - i - (out_hw[0] - 1) * stride - 1, stride - 1),
             (j, wp - j - (out_hw[1] - 1) * stride - 1, stride - 1), (0, 0, 0)),
        )
        dxp = dxp + placed
    (top, _), (left, _) = pads
    return (dxp[:, top : top + x.shape[1], left : left + x.shape[2], :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window: int = 2, stride: int = 2, padding: str = "VALID"):
    """Max pooling over NHWC `x` as a maximum of shifted strided slices.

    Same values as `flax.nnx.max_pool(x, (window, window), (stride, stride), padding)`, and the same
    gradient (each window's gradient goes to its first maximum). "SAME" pads with -inf the way XLA
    does (extra padding at the end for an even window).
    """
    return _max_pool(x, window, stride, padding)


def avg_pool(x, window: int = 2, stride: int = 2):
    """Average pooling (VALID), as a mean of shifted strided slices, for the same reason."""
    out_hw, _ = _pool_geometry(x.shape, window, stride, "VALID")
    total = 0.0
    for _, _, tap in _taps(x, (window, window), (stride, stride), out_hw):
        total = total + tap
    return total / (window * window)
