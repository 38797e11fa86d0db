"""What the layers' candidate formulations share: window geometry, taps, fp32-accumulating products,
the activations, and `_pick`, the tuner's choice among an op's candidates (models/layers.py says why)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import tuner


_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))
F32 = jnp.float32

ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}

def activate(name: str | None, x):
    """Apply the activation called `name`; None is the identity (Keras' 'linear')."""
    return x if name is None else ACTIVATIONS[name](x)


def _window_pads(size: tuple[int, int], window: tuple[int, int], strides: tuple[int, int], padding):
    """Explicit ((lo, hi), (lo, hi)) pads for "SAME"/"VALID" or already explicit pads."""
    if isinstance(padding, str):
        return tuple(tuple(p) for p in lax.padtype_to_pads(size, window, strides, padding.upper()))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _out_hw(shape, window, strides, pads):
    """Output (H, W) of a window sliding over NHWC `shape` with explicit pads, as XLA computes it."""
    return tuple((shape[1 + a] + sum(pads[a]) - window[a]) // strides[a] + 1 for a in range(2))


def _place(values, i, j, strides, padded_hw):
    """Inverse of one `_taps` slice: put tap (i, j)'s values back at their input pixels of the padded frame.

    `lax.pad` with interior padding (stride - 1) spreads them out; everything else is zero.
    """
    (sh, sw), (hp, wp), (ho, wo) = strides, padded_hw, values.shape[1:3]
    zero = jnp.zeros((), values.dtype)
    return lax.pad(values, zero, ((0, 0, 0), (i, hp - i - (ho - 1) * sh - 1, sh - 1),
                                  (j, wp - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))


def _taps(xp, window, strides, out_hw):
    """Yield (i, j, slice) for every window offset: the input pixels each output pixel sees there."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw, :]


def _dot(a, b, dims):
    """lax.dot_general accumulating in fp32 (bf16 operands: the fast AMX/AVX512_BF16 path)."""
    return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=F32)


# --- the tuner's view ---------------------------------------------------------------------------


def _random(spec, seed=0):
    """Arrays of the given (shape, dtype)s to time candidates on; values do not change the speed."""
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype) for shape, dtype in spec)


def _pick(op: str, table: dict, applies, inputs: list, **static) -> str:
    """The tuner's choice among `table`'s candidates that apply; each is timed on random `inputs`
    (a list of (shape, dtype)) with the `static` arguments bound."""
    names = [n for n in table if n == "xla" or applies(n)]
    key = tuple((tuple(s), jnp.dtype(d).name) for s, d in inputs) + tuple(sorted(static.items()))
    cands = {n: functools.partial(table[n], **static) for n in names}
    return tuner.choose(op, key, cands, lambda: _random(inputs))
