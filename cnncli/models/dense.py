"""The dense layer's product, its kernel gradient in measured forms (models/layers.py says why)."""

from __future__ import annotations

import jax
from jax import lax

from .. import tuner
from .ops import _dot, _pick


# --- dense: x @ weight.T for an (out, in) weight -------------------------------------------------


def _dense_kgrad_xla(x, dy):
    """Autodiff's dy^T x, contracting the leading (batch) axis of both operands."""
    return _dot(dy, x, ((0,), (0,)))


def _dense_kgrad_transposed(x, dy):
    """dy^T written out first, behind an optimization barrier so that XLA cannot fold the transpose
    back in: then a plain product. XLA:CPU gave autodiff's form to Eigen rather than YNNPACK, slow
    at power-of-two widths on the AVX2 EPYC (net1 on 32x32x3: 39.8 ms against 14.6)."""
    return _dot(lax.optimization_barrier(dy.T), x, ((1,), (0,)))


DENSE_KGRAD = {"xla": _dense_kgrad_xla, "transposed": _dense_kgrad_transposed}


def dense(x, weight):
    """x @ weight.T for an (out, in) `weight`: `Dense`'s product (bf16 operands accumulate in fp32)."""
    if tuner.is_plain():
        return x @ weight.T
    return _dense(x, weight)


@jax.custom_vjp
def _dense(x, weight):
    return _dot(x, weight, ((x.ndim - 1,), (1,))).astype(x.dtype)


def _dense_fwd(x, weight):
    return _dense(x, weight), (x, weight)


def _dense_bwd(res, dy):
    x, weight = res
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    name = _pick("dense_kgrad", DENSE_KGRAD, lambda n: True, [(x2.shape, x2.dtype), (dy2.shape, dy2.dtype)])
    dw = DENSE_KGRAD[name](x2, dy2)
    if name == "transposed":
        # The input gradient waits for the kernel gradient: side by side, the two products (and the
        # convolution backward after them) contended for the two cores of the AVX2 EPYC.
        dw, dy = lax.optimization_barrier((dw, dy))
    dx = _dot(dy, weight, ((dy.ndim - 1,), (0,))).astype(x.dtype)
    return dx, dw.astype(weight.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)
