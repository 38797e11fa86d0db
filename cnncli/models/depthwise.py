"""Depthwise convolution (one k x k filter per channel), each direction in its measured form.

XLA:CPU runs a grouped convolution with one channel per group as a generic loop: on the Zen 4 the
first depthwise layer of EfficientNet-Lite0 (112x112x32, 3x3) ran at ~0.25 GFLOP/s and the 16
layers' forward + weight gradient took 44 s per batch of 64 (issue #44). The same sum written as
k*k shifted slices times a per-channel weight row is one fused elementwise pass, which XLA
vectorises over the channels. Both are candidates of the tuner (`models/ops._pick`), per direction,
shape and dtype; under `tuner.plain()` (export, FLOP counts) the layer is XLA's grouped op.

The kernel is HWIO with I = 1 (k, k, 1, C), the layout `lax.conv_general_dilated` takes with
`feature_group_count=C`, so a checkpoint does not depend on which form ran.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .. import kernels, tuner
from .conv import _onednn_has
from .ops import _NHWC, F32, _out_hw, _pick, _taps, _window_pads


def _fwd_xla(x, kernel, strides, pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC,
                                    feature_group_count=x.shape[-1], preferred_element_type=F32).astype(x.dtype)


def _fwd_slices(x, kernel, strides, pads):
    """sum over taps (i, j) of x's shifted strided slice times kernel[i, j]: fp32 sums, one pass."""
    out_hw = _out_hw(x.shape, kernel.shape[:2], strides, pads)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    k32 = kernel.astype(F32)
    out = None
    for i, j, tap in _taps(xp, kernel.shape[:2], strides, out_hw):
        term = tap.astype(F32) * k32[i, j, 0]
        out = term if out is None else out + term
    return out.astype(x.dtype)


def _igrad_xla(dy, kernel, x_shape, strides, pads):
    x = jnp.zeros(x_shape, dy.dtype)
    return jax.vjp(lambda v: _fwd_xla(v, kernel, strides, pads), x)[1](dy)[0]


def _igrad_slices(dy, kernel, x_shape, strides, pads):
    """The transpose of the slices form (autodiff of it): each tap's dy * weight padded back into place."""
    x = jnp.zeros(x_shape, dy.dtype)
    return jax.vjp(lambda v: _fwd_slices(v, kernel, strides, pads), x)[1](dy)[0]


def _kgrad_xla(x, dy, kernel_shape, strides, pads):
    k = jnp.zeros(kernel_shape, x.dtype)
    return jax.vjp(lambda w: _fwd_xla(x, w, strides, pads), k)[1](dy)[0].astype(F32)


def _kgrad_slices(x, dy, kernel_shape, strides, pads):
    """kernel[i, j, 0, c] = sum over images and pixels of tap (i, j) times dy, accumulated one image at a
    time (`lax.scan`) so that each image's taps are reduced while in cache: 3-6x faster than reducing
    each tap over the whole batch on the AVX2 EPYC (44 against 139 ms for 16 x 112x112x32, 3x3)."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))

    def add_image(acc, image):
        xi, di = image
        d32 = di[None].astype(F32)
        rows = [jnp.sum(tap.astype(F32) * d32, axis=(0, 1, 2))
                for _, _, tap in _taps(xi[None], kernel_shape[:2], strides, dy.shape[1:3])]
        return acc + jnp.stack(rows), None

    start = jnp.zeros((kernel_shape[0] * kernel_shape[1], kernel_shape[-1]), F32)
    return lax.scan(add_image, start, (xp, dy))[0].reshape(kernel_shape)


def _fwd_onednn(x, kernel, strides, pads):
    return kernels.conv_fwd(x, kernel, _out_hw(x.shape, kernel.shape[:2], strides, pads), strides, pads)


def _igrad_onednn(dy, kernel, x_shape, strides, pads):
    return kernels.conv_bwd_data(dy, kernel, x_shape, strides, pads)


def _kgrad_onednn(x, dy, kernel_shape, strides, pads):
    return kernels.conv_bwd_weights(x, dy, kernel_shape, strides, pads)


# oneDNN's grouped convolution with one channel per group (its depthwise kernels).
FWD = {"xla": _fwd_xla, "slices": _fwd_slices, "onednn": _fwd_onednn}
IGRAD = {"xla": _igrad_xla, "slices": _igrad_slices, "onednn": _igrad_onednn}
KGRAD = {"xla": _kgrad_xla, "slices": _kgrad_slices, "onednn": _kgrad_onednn}


def _applies(kind, x_shape, kernel_shape, dtype, strides, pads):
    return lambda n: n != "onednn" or _onednn_has(kind, x_shape, kernel_shape, dtype, strides, pads)


def _forward(x, kernel, strides, pads):
    name = _pick("dwconv_fwd", FWD, _applies(kernels.CONV_FWD, x.shape, kernel.shape, x.dtype, strides, pads),
                 [(x.shape, x.dtype), (kernel.shape, kernel.dtype)], strides=strides, pads=pads)
    return FWD[name](x, kernel, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dwconv(x, kernel, strides, pads):
    return _forward(x, kernel, strides, pads)


def _dwconv_fwd(x, kernel, strides, pads):
    return _forward(x, kernel, strides, pads), (x, kernel)


def _dwconv_bwd(strides, pads, res, dy):
    x, kernel = res
    ins = [(x.shape, x.dtype), (dy.shape, dy.dtype)]
    kname = _pick("dwconv_kgrad", KGRAD,
                  _applies(kernels.CONV_BWD_WEIGHTS, x.shape, kernel.shape, x.dtype, strides, pads), ins,
                  kernel_shape=tuple(kernel.shape), strides=strides, pads=pads)
    iname = _pick("dwconv_igrad", IGRAD, _applies(kernels.CONV_BWD_DATA, x.shape, kernel.shape, x.dtype, strides, pads),
                  [(dy.shape, dy.dtype), (kernel.shape, kernel.dtype)], x_shape=tuple(x.shape), strides=strides,
                  pads=pads)
    dw = KGRAD[kname](x, dy, kernel.shape, strides, pads)
    dx = IGRAD[iname](dy, kernel, x.shape, strides, pads)
    return dx, dw.astype(kernel.dtype)


_dwconv.defvjp(_dwconv_fwd, _dwconv_bwd)


def depthwise_conv(x, kernel, stride: int = 1, padding="SAME"):
    """Depthwise 2-D convolution of NHWC `x` (C channels) with a (k, k, 1, C) `kernel`.

    The values of `lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=
    ("NHWC", "HWIO", "NHWC"), feature_group_count=C)`; bf16 operands accumulate in fp32.
    """
    strides = (stride, stride)
    pads = _window_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    if tuner.is_plain():
        return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC,
                                        feature_group_count=x.shape[-1])
    return _dwconv(x, kernel, strides, pads)
