"""2-D convolution in measured forms: forward, input gradient and kernel gradient each have a table of
candidates (XLA's op, im2col products, shifted slices, oneDNN's kernels), one chosen per shape by the
tuner (models/layers.py says why). `Conv` is `nnx.Conv` taking these forms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from .. import kernels, tuner
from .ops import _NHWC, F32, _dot, _out_hw, _pick, _place, _taps, _window_pads, activate


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


# --- convolution, bias and ReLU in one pass (oneDNN's post-ops) -----------------------------------


def _act_separate(x, kernel, bias, strides, pads, relu):
    y = _conv_forward(x, kernel, strides, pads) + bias.astype(x.dtype)
    return jax.nn.relu(y) if relu else y


def _act_onednn(x, kernel, bias, strides, pads, relu):
    return kernels.conv_fwd_bias(x, kernel, bias, _out_hw(x.shape, kernel.shape[:2], strides, pads), strides, pads,
                                 relu)


# "separate": the convolution in its own measured form, then XLA's pass adding the bias (and ReLU);
# "onednn": the kernel adds them as it writes each output block, and the output is written once.
CONV_ACT = {"separate": _act_separate, "onednn": _act_onednn}


def _fused(x, kernel, bias, strides, pads, relu) -> bool:
    """Whether the tuner chose the one-pass form for this layer (timed forward, like `conv_fwd`)."""
    kind = kernels.CONV_FWD_BIAS_RELU if relu else kernels.CONV_FWD_BIAS

    def applies(n):
        return n == "separate" or _onednn_has(kind, x.shape, kernel.shape, x.dtype, strides, pads)

    return _pick("conv_act_fwd", CONV_ACT, applies, [(x.shape, x.dtype), (kernel.shape, kernel.dtype),
                                                      (bias.shape, bias.dtype)],
                 strides=strides, pads=pads, relu=relu) == "onednn"


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv_bias_act(x, kernel, bias, strides, pads, relu):
    return _act_onednn(x, kernel, bias, strides, pads, relu)


def _conv_bias_act_fwd(x, kernel, bias, strides, pads, relu):
    y = _conv_bias_act(x.value, kernel.value, bias.value, strides, pads, relu)
    # ReLU's gradient needs only where y > 0: y is kept, not the sum before it (as `_conv_fwd`, a
    # network input's gradient is neither computed nor measured).
    return y, (x.value, kernel.value, bias.value, y if relu else None) + (((),) if x.perturbed else ())


def _conv_bias_act_bwd(strides, pads, relu, res, dy):
    x, kernel, bias, y = res[:4]
    if isinstance(dy, jax.custom_derivatives.SymbolicZero):
        dy = jnp.zeros(dy.shape, dy.dtype)
    dz = jnp.where(y > 0, dy, jnp.zeros((), dy.dtype)) if relu else dy  # relu'(0) = 0, as jax.nn.relu
    db = dz.astype(F32).sum((0, 1, 2))
    dw = _kernel_grad(x, dz, kernel.shape, strides, pads)
    dx = _input_grad(dz, kernel, x.shape, strides, pads) if len(res) == 5 else None
    return dx, dw.astype(kernel.dtype), db.astype(bias.dtype)


_conv_bias_act.defvjp(_conv_bias_act_fwd, _conv_bias_act_bwd, symbolic_zeros=True)


def conv2d_act(x, kernel, bias, stride=1, padding="SAME", activation=None):
    """activate(activation, conv2d(x, kernel, bias, stride, padding)): Keras' Conv2D. With a bias and
    ReLU (or no activation), in one oneDNN pass where the tuner measured that faster."""
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pads = _window_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    if (bias is not None and activation in (None, "relu") and not tuner.is_plain()
            and _fused(x, kernel, bias, strides, pads, activation == "relu")):
        return _conv_bias_act(x, kernel, bias, strides, pads, activation == "relu")
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
