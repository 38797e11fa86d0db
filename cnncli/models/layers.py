"""Layers as candidate formulations; which one runs is measured on the machine at hand (`tuner`).

Each op (a convolution's forward pass, input gradient and kernel gradient; max pooling forward and
backward; a dense layer's kernel gradient) has a table of candidates, plain functions with one
signature, the first of which is XLA's own op. While a model is traced, `_pick` asks the tuner for
the fastest candidate for that op, shape and dtype; the tuner times them once on this CPU and
caches the choice. Why candidates at all: on a 2-core AVX2 EPYC each of these forms beat XLA's op
(e.g. the gradient of `reduce_window` max pooling cost more than the network's largest
convolution; a strided convolution's input gradient was ~75% products with zeros), while on an
AVX-512/AMX Xeon the same forms lost 10-50% (issue #29). docs/performance.md has the history.

Mixed precision: with bf16 operands every product accumulates in fp32
(`preferred_element_type`) and is rounded to bf16 once: on AMX a bf16 dot returning bf16 runs no
faster than fp32 (~130 GFLOP/s) while with fp32 accumulation it reaches 440-730.

Under `tuner.plain()` (`reference_ops`) every layer is the plain `lax` op with no custom gradient:
what `summary` counts and what an exporter can convert.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from .. import kernels, tuner

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))
F32 = jnp.float32

ACTIVATIONS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}

reference_ops = tuner.plain  # the switch for plain ops (summary, export)


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


# --- convolution: batch chunking and im2col -------------------------------------------------------


# Bytes of patches per chunk when a product is written as im2col + matmul: the patch matrix is built
# and consumed while it sits in cache (built whole for 128 28x28 images it is 113 MB, and writing
# it cost more than the product on the AVX2 EPYC). A size, not a choice between forms: both the
# chunked and the whole-batch forms are candidates where it matters (`_kgrad_im2col_whole`).
CHUNK_BYTES = 2.5e6
PIXEL_GROUP = 4  # output pixels per patch row in `_kgrad_grouped`


def _chunk(batch: int, limit: int) -> int:
    """The largest divisor of `batch` up to `limit` (at least 1): the images per chunk of a batch loop.

    On several devices the batch axis is sharded; slicing it in a loop would gather it, so the
    whole batch is one chunk there.
    """
    if jax.device_count() > 1:
        return batch
    return max(c for c in range(1, min(max(limit, 1), batch) + 1) if batch % c == 0)


def _patch_chunk(batch: int, out_hw, kernel_shape, itemsize: int) -> int:
    """Images per chunk whose patches (Ho*Wo*kh*kw*Cin values per image), or gradient rows (Ho*Wo*Cout),
    fit CHUNK_BYTES."""
    kh, kw, cin, cout = kernel_shape
    per_image = out_hw[0] * out_hw[1] * max(kh * kw * cin, cout) * itemsize
    return _chunk(batch, int(CHUNK_BYTES // per_image))


def _map_chunks(fn, n: int, c: int):
    """fn(i) for each of the n // c batch chunks, concatenated along the batch (no loop for one chunk)."""
    if c == n:
        return fn(0)
    # Not `lax.map`: its output buffer is first filled with zeros; padding the first chunk's result
    # makes that buffer in the same pass.
    first = fn(0)
    out = lax.pad(first, jnp.zeros((), first.dtype), ((0, n - c, 0),) + ((0, 0, 0),) * (first.ndim - 1))
    return lax.fori_loop(1, n // c, lambda i, out: lax.dynamic_update_slice_in_dim(out, fn(i), i * c, 0), out)


def _patches(x, kernel_hw, strides, pads, out_hw):
    """im2col of NHWC `x`: (N*Ho*Wo, kh*kw*Cin), taps in the kernel's (i, j, cin) order.

    Built a kernel row at a time: with the padded width cut into blocks of sw columns, row i of a
    patch is ceil(kw/sw) contiguous runs (whole blocks, then part of one), not kw slices. At stride
    2 that is 6 pieces of 64 and 32 floats instead of 9 of 32, which XLA:CPU copies faster: net2's
    32->64 kernel gradient 8.6 ms against 10.4 alone, net2 trains 5.5% faster (28x28x1) and 6.8%
    (32x32x3); at stride 1 it is the same slices as before (net1, resnet20 1.00x).
    """
    (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
    n, cin = x.shape[0], x.shape[-1]
    blocks = -(-kw // sw)  # per patch row
    width = sw * (wo - 1 + blocks)  # the padded columns the blocks cover; more are cropped, fewer padded
    extra = max(0, width - x.shape[2] - sum(pads[1]))
    xp = jnp.pad(x, ((0, 0), pads[0], (pads[1][0], pads[1][1] + extra), (0, 0)))[:, :, :width]
    xb = xp.reshape(n, xp.shape[1], width // sw, sw * cin)
    rows = []
    for i in range(kh):
        r = xb[:, i : i + (ho - 1) * sh + 1 : sh]
        pieces = [r[:, :, b : b + wo, : min(sw, kw - b * sw) * cin] for b in range(blocks)]
        rows.append(jnp.concatenate(pieces, -1))
    return jnp.stack(rows, 3).reshape(-1, kh * kw * cin)


# --- convolution forward: (x, kernel, strides, pads) -> y, in x's dtype --------------------------


def _fwd_xla(x, kernel, strides, pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC,
                                    preferred_element_type=F32).astype(x.dtype)


def _fwd_im2col(x, kernel, strides, pads, whole=False):
    """Patches (pixels x kh*kw*Cin) times the (kh*kw*Cin x Cout) kernel, in cache-sized batch chunks.
    With 3 input channels XLA:CPU's own convolution ran at ~32 GFLOP/s on the AVX2 EPYC; in bf16
    this is the form that reaches the AMX/AVX512_BF16 matmul (net1's 32->64 layer: 270 GFLOP/s
    against 58 for XLA's fp32 convolution on the AMX Xeon). `whole`: one product for the batch (a
    larger product, a patch matrix that does not stay in cache)."""
    kh, kw, _, cout = kernel.shape
    n = x.shape[0]
    out_hw = _out_hw(x.shape, (kh, kw), strides, pads)
    c = n if whole else _patch_chunk(n, out_hw, kernel.shape, x.dtype.itemsize)
    w = kernel.reshape(-1, cout)

    def chunk(i):
        p = _patches(lax.dynamic_slice_in_dim(x, i * c, c), (kh, kw), strides, pads, out_hw)
        return _dot(p, w, ((1,), (0,))).astype(x.dtype).reshape(c, *out_hw, cout)

    return _map_chunks(chunk, n, c)


def _fwd_slices(x, kernel, strides, pads):
    """A sum of kh*kw*Cin shifted slices times a weight row, one fused elementwise pass per batch chunk
    (fp32 sums). For single-channel first layers XLA's convolution ran at ~3 GFLOP/s on the AVX2
    EPYC (net1's first layer 20 ms; this 1 ms). Computed in a loop over two or more chunks so that
    it is materialised: fused into its consumers, XLA recomputes the sum for every read."""
    kh, kw, cin, _ = kernel.shape
    ho, wo = _out_hw(x.shape, (kh, kw), strides, pads)
    k32 = kernel.astype(F32)

    def slices(xc):
        xp = jnp.pad(xc.astype(F32), ((0, 0), pads[0], pads[1], (0, 0)))
        out = None
        for i, j, tap in _taps(xp, (kh, kw), strides, (ho, wo)):
            for ci in range(cin):
                term = tap[..., ci : ci + 1] * k32[i, j, ci]
                out = term if out is None else out + term
        return out.astype(x.dtype)

    n = x.shape[0]
    c = _chunk(n, n // 2)
    return _map_chunks(lambda i: slices(lax.dynamic_slice_in_dim(x, i * c, c)), n, c)


SLICE_TERMS = 36  # a sum of more terms than this compiles to an unrolled program too large to be a candidate
def _fwd_onednn(x, kernel, strides, pads):
    return kernels.conv_fwd(x, kernel, _out_hw(x.shape, kernel.shape[:2], strides, pads), strides, pads)


def _onednn_has(kind, x_shape, kernel_shape, dtype, strides, pads) -> bool:
    """oneDNN's kernel is a candidate: built and loaded here, with a real (not `ref:`) implementation
    for this convolution on this CPU (bf16 on AVX2 has none). Asked only when the tuner measures."""
    out_hw = _out_hw(x_shape, kernel_shape[:2], strides, pads)
    return tuner.active() and kernels.fast(kernels.conv_geo(kind, dtype, x_shape, kernel_shape, out_hw, strides, pads))


CONV_FWD = {"xla": _fwd_xla, "im2col": _fwd_im2col, "im2col_whole": functools.partial(_fwd_im2col, whole=True),
            "slices": _fwd_slices, "onednn": _fwd_onednn}


def _conv_forward(x, kernel, strides, pads):
    kh, kw, cin, _ = kernel.shape

    def applies(n):
        if n == "onednn":
            return _onednn_has(kernels.CONV_FWD, x.shape, kernel.shape, x.dtype, strides, pads)
        return n != "slices" or kh * kw * cin <= SLICE_TERMS

    name = _pick("conv_fwd", CONV_FWD, applies, [(x.shape, x.dtype), (kernel.shape, kernel.dtype)], strides=strides,
                 pads=pads)
    return CONV_FWD[name](x, kernel, strides, pads)


# --- convolution input gradient: (dy, kernel, x_shape, strides, pads) -> dx ---------------------


def _igrad_xla(dy, kernel, x_shape, strides, pads):
    x0 = jnp.zeros(x_shape, dy.dtype)
    return jax.vjp(lambda x: _fwd_xla(x, kernel, strides, pads), x0)[1](dy)[0]


def _igrad_im2col(dy, kernel, x_shape, strides, pads, whole=False):
    """Stride 1: dx is the forward convolution of dy, padded by (k - 1 - pad) (negative: cropped), with
    the spatially flipped kernel, Cin and Cout swapped; here in its im2col form."""
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = pads
    zero = jnp.zeros((), dy.dtype)
    dyp = lax.pad(dy, zero, ((0, 0, 0), (kh - 1 - top, kh - 1 - bottom, 0), (kw - 1 - left, kw - 1 - right, 0),
                             (0, 0, 0)))
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    return _fwd_im2col(dyp, flipped, (1, 1), ((0, 0), (0, 0)), whole)

def _igrad_phases(dy, kernel, x_shape, strides, pads):
    """d(loss)/d(x) of a strided convolution as sh*sw stride-1 convolutions, one per input phase.

    XLA:CPU runs it as one convolution over the stride-dilated dy, three quarters of whose
    products are with zeros at stride 2. Input row h = sh*a + r only meets the taps i with
    i = (r + top) mod sh, every sh-th one, so each phase (r, c) of dx is an ordinary stride-1
    convolution of dy with the flipped sub-kernel kernel[p::sh, q::sw] (XLA's fast path, no zero
    products), and dx interleaves the phases. On the AVX2 EPYC, net2 32->64, batch 128: 11.0 ms at 28x28 and
    13.7 at 32x32 against 13.0 / 17.6 as matmul + col2im and 16.9 / 21.9 as XLA's; net2 trains
    4-8% faster.
    """
    (sh, sw), cin = strides, kernel.shape[2]
    n, ho, wo = dy.shape[:3]
    rows, cols = -(-x_shape[1] // sh), -(-x_shape[2] // sw)  # phase sizes: the canvas is cropped at the end
    (top, _), (left, _) = pads

    def phase(r, c):
        p, q = (r + top) % sh, (c + left) % sw
        sub = kernel[p::sh, q::sw]
        if sub.size == 0:  # a kernel smaller than the stride never reaches this phase
            return jnp.zeros((n, rows, cols, cin), dy.dtype)
        t, u = sub.shape[:2]
        d, e = (r + top - p) // sh, (c + left - q) // sw  # dx_rc[a, b] = sum dy[a + d - i, b + e - j] sub[i, j]
        lo_h, lo_w = t - 1 - d, u - 1 - e
        dy_pad = lax.pad(dy, jnp.zeros((), dy.dtype), ((0, 0, 0), (lo_h, rows + t - 1 - ho - lo_h, 0),
                                                       (lo_w, cols + u - 1 - wo - lo_w, 0), (0, 0, 0)))
        return _fwd_xla(dy_pad, sub[::-1, ::-1].transpose(0, 1, 3, 2), (1, 1), ((0, 0), (0, 0)))

    dx = jnp.stack([jnp.stack([phase(r, c) for c in range(sw)], 3) for r in range(sh)], 2)
    return dx.reshape(n, rows * sh, cols * sw, cin)[:, : x_shape[1], : x_shape[2]]


def _igrad_col2im(dy, kernel, x_shape, strides, pads):
    """A strided input gradient as matmul + col2im in cache-sized batch chunks: dy @
    kernel^T gives every tap's share per output pixel, and each tap is placed back at its strided
    input positions (`lax.pad` with interior padding)."""
    kh, kw, cin, cout = kernel.shape
    n, ho, wo = dy.shape[:3]
    padded_hw = (x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1]))
    (top, _), (left, _) = pads
    c = _patch_chunk(n, (ho, wo), kernel.shape, dy.dtype.itemsize)
    w_t = kernel.reshape(-1, cout).T

    def chunk(i):
        cols = _dot(lax.dynamic_slice_in_dim(dy, i * c, c).reshape(-1, cout), w_t, ((1,), (0,)))
        cols = cols.reshape(c, ho, wo, kh, kw, cin)  # fp32 until the taps are summed
        dxp = sum(_place(cols[:, :, :, a, b], a, b, strides, padded_hw) for a in range(kh) for b in range(kw))
        return dxp[:, top : top + x_shape[1], left : left + x_shape[2]].astype(dy.dtype)

    return _map_chunks(chunk, n, c)


IGRAD = {"xla": _igrad_xla, "im2col": _igrad_im2col, "im2col_whole": functools.partial(_igrad_im2col, whole=True),
         "phases": _igrad_phases, "col2im": _igrad_col2im, "onednn": kernels.conv_bwd_data}


def _input_grad(dy, kernel, x_shape, strides, pads):
    """d(loss)/d(x) of `_conv` (not asked for a network's input: see `_conv_fwd`)."""
    strided = strides != (1, 1)

    def applies(n):
        if n == "onednn":
            return _onednn_has(kernels.CONV_BWD_DATA, x_shape, kernel.shape, dy.dtype, strides, pads)
        return n == "col2im" or n.startswith("im2col") != strided

    name = _pick("conv_igrad", IGRAD, applies,
                 [(dy.shape, dy.dtype), (kernel.shape, kernel.dtype)], x_shape=tuple(x_shape), strides=strides,
                 pads=pads)
    return IGRAD[name](dy, kernel, x_shape, strides, pads)


# --- convolution kernel gradient: (x, dy, kernel_shape, strides, pads) -> dw, fp32 ----------------


def _kgrad_xla(x, dy, kernel_shape, strides, pads):
    k0 = jnp.zeros(kernel_shape, x.dtype)
    return jax.vjp(lambda k: _fwd_xla(x, k, strides, pads), k0)[1](dy)[0].astype(F32)


def _kgrad_patches(x, dy, kernel_shape, strides, pads, group=1, transposed=False, whole=False):
    """patches (N*Ho*Wo, kh*kw*Cin)^T @ dy (N*Ho*Wo, Cout), summed over cache-sized batch chunks in a
    `fori_loop` (`whole`: one chunk), fp32 accumulation.

    `transposed`: taken as dy^T @ patches, (Cout, kh*kw*Cin): XLA:CPU ran a product summing over
    the rows of both operands at 91-105 GFLOP/s on the AVX2 EPYC, with the small dy chunk transposed
    first at 115. `group` > 1 (single-channel layers): a patch row of g neighbouring output pixels (a
    kh x (kw+g-1) window every g columns) against their g*Cout gradients gives a (kh*(kw+g-1)) x
    (g*Cout) product whose g diagonal blocks sum to the kernel gradient: twice the multiplies at g=4,
    but a 9-column product (9 x Cout, summing over every pixel) ran at ~25 GFLOP/s.
    """
    kh, kw, cin, cout = kernel_shape
    n, ho, wo = dy.shape[:3]
    c = n if whole else _patch_chunk(n, (ho, wo), kernel_shape, x.dtype.itemsize)
    g = group
    window, steps = (kh, kw + g - 1), (strides[0], strides[1] * g)

    def add_chunk(i, acc):
        xc, dyc = lax.dynamic_slice_in_dim(x, i * c, c), lax.dynamic_slice_in_dim(dy, i * c, c)
        patches = _patches(xc, window, steps, pads, (ho, wo // g))
        dyc = dyc.reshape(-1, g * cout)
        return acc + (_dot(dyc.T, patches, ((1,), (0,))) if transposed else _dot(patches, dyc, ((0,), (0,))))

    rows, cols = kh * (kw + g - 1) * cin, g * cout
    zero = jnp.zeros((cols, rows) if transposed else (rows, cols), F32)
    grad = add_chunk(0, zero) if c == n else lax.fori_loop(0, n // c, add_chunk, zero)
    grad = (grad.T if transposed else grad).reshape(kh, kw + g - 1, cin, g, cout)
    return sum(grad[:, r : r + kw, :, r] for r in range(g))


KGRAD = {
    "xla": _kgrad_xla,
    "im2col": _kgrad_patches,
    "im2col_whole": functools.partial(_kgrad_patches, whole=True),
    "im2col_t": functools.partial(_kgrad_patches, transposed=True),
    "grouped": functools.partial(_kgrad_patches, group=PIXEL_GROUP),
    "onednn": kernels.conv_bwd_weights,
}


def _kernel_grad(x, dy, kernel_shape, strides, pads):
    grouped = kernel_shape[2] == 1 and strides == (1, 1) and dy.shape[2] % PIXEL_GROUP == 0

    def applies(n):
        if n == "onednn":
            return _onednn_has(kernels.CONV_BWD_WEIGHTS, x.shape, kernel_shape, x.dtype, strides, pads)
        return n != "grouped" or grouped

    name = _pick("conv_kgrad", KGRAD, applies,
                 [(x.shape, x.dtype), (dy.shape, dy.dtype)], kernel_shape=tuple(kernel_shape), strides=strides,
                 pads=pads)
    return KGRAD[name](x, dy, kernel_shape, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
    return _conv_forward(x, kernel, strides, pads)


def _conv_fwd(x, kernel, strides, pads):
    # A network's input is not differentiated (`perturbed` is False): its gradient is then neither
    # computed nor measured (the residuals' structure carries that to the backward pass); measuring
    # it was 1.4 s of net1's 15 s of tuning.
    out = _conv(x.value, kernel.value, strides, pads)
    return out, (x.value, kernel.value) + (((),) if x.perturbed else ())


def _conv_bwd(strides, pads, res, dy):
    x, kernel = res[:2]
    if isinstance(dy, jax.custom_derivatives.SymbolicZero):
        dy = jnp.zeros(dy.shape, dy.dtype)
    dw = _kernel_grad(x, dy, kernel.shape, strides, pads)
    dx = _input_grad(dy, kernel, x.shape, strides, pads) if len(res) == 3 else None
    return dx, dw.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)


def _conv2d(x, kernel, strides, pads):
    if tuner.is_plain():
        return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)
    return _conv(x, kernel, strides, pads)


def conv2d(x, kernel, bias=None, stride=1, padding="SAME"):
    """2-D convolution of NHWC `x` with an HWIO `kernel` (+ bias), each direction in its measured form.

    Same values and gradients as `lax.conv_general_dilated(x, kernel, (stride, stride), padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias` (up to rounding; bf16 operands accumulate in fp32).
    """
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pads = _window_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    y = _conv2d(x, kernel, strides, pads)
    return y if bias is None else y + bias.astype(y.dtype)


def conv2d_act(x, kernel, bias, stride=1, padding="SAME", activation=None):
    """activate(activation, conv2d(x, kernel, bias, stride, padding)): Keras' Conv2D."""
    return activate(activation, conv2d(x, kernel, bias, stride, padding))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for `lax.conv_general_dilated` (the hook `nnx.Conv` takes) using `conv2d`'s forms.

    Only plain 2-D NHWC/HWIO convolutions (no dilation, no groups, non-negative padding) take the
    tuned path; anything else goes to `lax.conv_general_dilated` unchanged.
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
    return _conv2d(lhs, rhs, tuple(window_strides), pads)


class Conv(nnx.Conv):
    """`nnx.Conv` (same arguments, parameters, initialisation, checkpoints) with `conv2d`'s measured forms."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("conv_general_dilated", conv_general_dilated)
        super().__init__(*args, **kwargs)


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
