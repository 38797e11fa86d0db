"""Layers expressed the way XLA:CPU runs them fastest; each is tested against the plain form.

Why this file exists (measured on the 2-core CPU, net1, batch 128; see `cnn bench`):
- The gradient of `reduce_window` max-pooling (select-and-scatter) costs more than the network's
  largest convolution. A maximum over shifted slices computes the same values, and a hand-written
  backward pass (one fused pass of compare-and-place) gives the same gradient.
- Convolutions with more than a few input channels are plain `lax` convs, forward and backward,
  except for the strided ones' gradients: XLA computes the input gradient as a convolution over
  the stride-dilated gradient (mostly products with zeros) and the kernel gradient as one with an
  output-sized window, slower than the phase convolutions of `_strided_input_grad` and the matmul
  form of `_conv_kernel_grad`. First layers (few input channels) are a sum of shifted slices
  (`_sum_of_slices`) or, from 3 channels, im2col + matmul (`_few_channel_conv`), with their bias
  and activation in the same pass (`conv2d_act`).
- A large dense layer's kernel gradient dy^T x goes to YNNPACK with dy^T written out first
  (`dense`): autodiff's form runs on Eigen, at half speed or worse for power-of-two widths.
- All of it is measured with `runtime.tune_xla`'s setting (XLA's multi-threaded convolutions
  instead of YNNPACK's); under YNNPACK's the plain stride-1 kernel gradient was no faster than
  im2col + matmul, and the strided forward slower.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))

# name -> (activation, its derivative as a function of its output). The output form is what lets
# `conv2d_act` keep only a first layer's output for the backward pass.
ACTIVATIONS = {
    "relu": (jax.nn.relu, lambda y: (y > 0).astype(y.dtype)),
    "sigmoid": (jax.nn.sigmoid, lambda y: y * (1 - y)),
    "tanh": (jnp.tanh, lambda y: 1 - y * y),
}


def activate(name: str | None, x):
    """Apply the activation called `name`; None is the identity (Keras' 'linear')."""
    return x if name is None else ACTIVATIONS[name][0](x)


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


# --- convolution -------------------------------------------------------------------------------


# Bytes of patches per chunk when a kernel gradient is written as im2col + matmul: the
# (chunk*Ho*Wo, kh*kw*Cin) patch matrix is built and consumed while it sits in cache. Built whole
# for a batch of 128 28x28 images it is 113 MB, and XLA:CPU spends longer writing it than
# multiplying. Measured on the 2-core CPU, batch 128: net1's 32->64 kernel gradient 193 ms whole,
# ~50 ms in chunks (1-4 MB all close).
CHUNK_BYTES = 2.5e6
# From this many input pixels a strided input gradient is computed by phases (_strided_input_grad).
# Below, on resnet20's 16x16 32->64 layer, the four 8x8 phase convolutions were faster alone but
# made the train step 6-8% slower (in-process A/B, 3 runs), so small images keep matmul + col2im.
PHASE_MIN_PIXELS = 24 * 24
SMALL_CIN = 4  # up to this many input channels a layer is a first layer: `_few_channel_conv`'s forms
PATCH_MIN_CIN = 3  # from this many of those, im2col + matmul instead (see _few_channel_conv)
PIXEL_GROUP = 4  # output pixels per patch row in a single-channel layer's kernel gradient (_conv_kernel_grad)
_reference = False


@contextlib.contextmanager
def reference_ops():
    """Trace convolutions as plain `lax.conv_general_dilated` (what `summary` counts: the math, not the form)."""
    global _reference
    before, _reference = _reference, True
    try:
        yield
    finally:
        _reference = before


def _chunk(batch: int, limit: int) -> int:
    """The largest divisor of `batch` up to `limit` (at least 1): the images per chunk of a batch loop.

    On several devices the batch axis is sharded; slicing it in a loop would gather it, so the
    whole batch is one chunk there.
    """
    if jax.device_count() > 1:
        return batch
    return max(c for c in range(1, min(max(limit, 1), batch) + 1) if batch % c == 0)


def _patch_chunk(batch: int, out_hw, kernel_shape, itemsize: int) -> int:
    """Images per chunk whose patches (Ho*Wo*kh*kw*Cin values per image), or gradient rows (Ho*Wo*Cout,
    more for a first layer), fit CHUNK_BYTES."""
    kh, kw, cin, cout = kernel_shape
    per_image = out_hw[0] * out_hw[1] * max(kh * kw * cin, cout) * itemsize
    return _chunk(batch, int(CHUNK_BYTES // per_image))


def _map_chunks(fn, n: int, c: int):
    """fn(i) for each of the n // c batch chunks, concatenated along the batch (no loop for one chunk)."""
    if c == n:
        return fn(0)
    # Not `lax.map`: its output buffer is first filled with zeros (a 12.8 MB write for net1's first
    # layer, ~1 ms); padding the first chunk's result makes that buffer in the same pass. net2 +1.5%.
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


def _conv_forward(x, kernel, strides, pads):
    """`_conv`'s forward pass (values as `lax`'s, up to rounding): `_few_channel_conv` for few input
    channels, otherwise (strided) the plain `lax` convolution: 5.8 ms against 8.3 as im2col + matmul
    for net2's 32->64 layer, batch 128."""
    if kernel.shape[2] <= SMALL_CIN:
        return _few_channel_conv(x, kernel, strides, pads)
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)


def _few_channel_conv(x, kernel, strides, pads, epilogue=None):
    """A convolution with few input channels (an image's first layer), `epilogue` (bias, activation)
    applied chunk by chunk: `_sum_of_slices` for 1-2 channels, im2col + matmul from 3.

    With 3 channels the sum has 27 terms per output and XLA:CPU's fused loop runs it at ~32
    GFLOP/s, as slow as its own convolution; the (pixels x 27) patches times the (27 x Cout)
    kernel, in cache-sized chunks, do better: batch 128, 32x32x3 -> 32 7.0 -> 5.3 ms, -> 16 3.5 ->
    2.9, -> 64 13.2 -> 7.0; 128x128x3 -> 32 (batch 64) 56 -> 46. With 1 or 2 channels the slices
    win (28x28x1 -> 32: 1.2 against 3.1 ms; 28x28x2: 2.8 against 3.7).
    """
    if kernel.shape[2] < PATCH_MIN_CIN:
        return _sum_of_slices(x, kernel, strides, pads, epilogue)
    kh, kw, _, cout = kernel.shape
    n = x.shape[0]
    out_hw = _out_hw(x.shape, (kh, kw), strides, pads)
    c = _patch_chunk(n, out_hw, kernel.shape, x.dtype.itemsize)
    w = kernel.reshape(-1, cout)

    def chunk(i):
        y = _patches(lax.dynamic_slice_in_dim(x, i * c, c), (kh, kw), strides, pads, out_hw) @ w
        y = y.reshape(c, *out_hw, cout)
        return y if epilogue is None else epilogue(y)

    return _map_chunks(chunk, n, c)


def _sum_of_slices(x, kernel, strides, pads, epilogue=None):
    """A convolution with few input channels (an image's first layer) as a sum of kh*kw*Cin shifted
    slices times a weight row, one fused elementwise pass per batch chunk, `epilogue` (bias,
    activation) applied in the same pass. XLA's convolution with Cin=1 ran at ~3 GFLOP/s (net1's
    first layer 20 ms; this 1 ms; 1.3 against 2.8 ms with XLA's own convs)."""
    kh, kw, cin, _ = kernel.shape
    ho, wo = _out_hw(x.shape, (kh, kw), strides, pads)

    def slices(xc):
        xp = jnp.pad(xc, ((0, 0), pads[0], pads[1], (0, 0)))
        out = None
        for i, j, tap in _taps(xp, (kh, kw), strides, (ho, wo)):
            for c in range(cin):
                term = tap[..., c : c + 1] * kernel[i, j, c]
                out = term if out is None else out + term
        return out if epilogue is None else epilogue(out)

    # Computed in a loop over two or more batch chunks so that it is materialised: a loop's output
    # is a fusion boundary. Fused into its consumers instead, XLA recomputes the whole sum per read
    # (a stride-2 pool's backward reads it up to 4 times: 28 ms of workshop's step, 9 ms materialised;
    # `optimization_barrier` does not prevent it, XLA:CPU removes barriers before fusion).
    n = x.shape[0]
    c = _chunk(n, n // 2)
    return _map_chunks(lambda i: slices(lax.dynamic_slice_in_dim(x, i * c, c)), n, c)


def _conv2d(x, kernel, strides, pads):
    """The convolution in the form XLA:CPU runs fastest: XLA's own, forward and backward, at stride 1
    with more than a few input channels; `_conv`'s forms for first layers and strided convolutions."""
    if _reference or (strides == (1, 1) and kernel.shape[2] > SMALL_CIN):
        return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)
    return _conv(x, kernel, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, pads):
    return _conv_forward(x, kernel, strides, pads)


def _conv_fwd(x, kernel, strides, pads):
    return _conv(x, kernel, strides, pads), (x, kernel)


def _conv_bwd(strides, pads, res, dy):
    x, kernel = res
    dx = _input_grad(dy, kernel, x.shape, strides, pads)
    dw, _ = _conv_kernel_grad(x, dy, kernel.shape, strides, pads)  # the unused bias sum: XLA drops it
    return dx, dw.astype(kernel.dtype)


def _input_grad(dy, kernel, x_shape, strides, pads):
    """d(loss)/d(x) of `_conv`: XLA's own at stride 1 (only first layers get here, see `_conv2d`;
    XLA's input gradient is fast), `_strided_input_grad` otherwise. Unused for a network's input
    (no gradient is taken there), XLA drops it."""
    if strides == (1, 1):
        conv = lambda x_: lax.conv_general_dilated(x_, kernel, strides, pads, dimension_numbers=_NHWC)
        return jax.vjp(conv, jnp.zeros(x_shape, dy.dtype))[1](dy)[0]
    return _strided_input_grad(dy, kernel, x_shape, strides, pads)


def _strided_input_grad(dy, kernel, x_shape, strides, pads):
    """d(loss)/d(x) of a strided convolution: from PHASE_MIN_PIXELS as sh*sw stride-1 convolutions,
    one per input phase, below it as `_strided_input_grad_col2im`.

    XLA:CPU runs it as one convolution over the stride-dilated dy, three quarters of whose
    products are with zeros at stride 2. Input row h = sh*a + r only meets the taps i with
    i = (r + top) mod sh, every sh-th one, so each phase (r, c) of dx is an ordinary stride-1
    convolution of dy with the flipped sub-kernel kernel[p::sh, q::sw] (XLA's fast path, no zero
    products), and dx interleaves the phases. net2's 32->64 layer, batch 128: 11.0 ms at 28x28 and
    13.7 at 32x32 against 13.0 / 17.6 as matmul + col2im and 16.9 / 21.9 as XLA's; net2 trains
    4-8% faster.
    """
    if x_shape[1] * x_shape[2] < PHASE_MIN_PIXELS:
        return _strided_input_grad_col2im(dy, kernel, x_shape, strides, pads)
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
        return lax.conv_general_dilated(dy_pad, sub[::-1, ::-1].transpose(0, 1, 3, 2), (1, 1), "VALID",
                                        dimension_numbers=_NHWC)

    dx = jnp.stack([jnp.stack([phase(r, c) for c in range(sw)], 3) for r in range(sh)], 2)
    return dx.reshape(n, rows * sh, cols * sw, cin)[:, : x_shape[1], : x_shape[2]]


def _strided_input_grad_col2im(dy, kernel, x_shape, strides, pads):
    """`_strided_input_grad` for small images, as matmul + col2im in cache-sized batch chunks: dy @
    kernel^T gives every tap's share per output pixel, and each tap is placed back at its strided
    input positions (`lax.pad` with interior padding)."""
    kh, kw, cin, cout = kernel.shape
    n, ho, wo = dy.shape[:3]
    padded_hw = (x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1]))
    (top, _), (left, _) = pads
    c = _patch_chunk(n, (ho, wo), kernel.shape, dy.dtype.itemsize)
    w_t = kernel.reshape(-1, cout).T

    def chunk(i):
        cols = (lax.dynamic_slice_in_dim(dy, i * c, c).reshape(-1, cout) @ w_t).reshape(c, ho, wo, kh, kw, cin)
        dxp = sum(_place(cols[:, :, :, a, b], a, b, strides, padded_hw) for a in range(kh) for b in range(kw))
        return dxp[:, top : top + x_shape[1], left : left + x_shape[2]]

    return _map_chunks(chunk, n, c)


def _conv_kernel_grad(x, dy, kernel_shape, strides, pads, y=None, derivative=None):
    """(d(loss)/d(kernel), d(loss)/d(bias)): the kernel's as im2col + matmul, patches (N*Ho*Wo,
    kh*kw*Cin)^T @ dy (N*Ho*Wo, Cout), the bias's as the sum of dy.

    The sums over the batch run in cache-sized chunks inside a `fori_loop` (see CHUNK_BYTES).
    With a first layer's output `y` and its activation's `derivative`, each chunk of dy is first
    multiplied by derivative(y): the activation's backward, never materialised whole.
    """
    kh, kw, cin, cout = kernel_shape
    n, ho, wo = dy.shape[:3]
    c = _patch_chunk(n, (ho, wo), kernel_shape, x.dtype.itemsize)
    # A single-channel layer's patches have kh*kw columns (9), a product shape (9 x Cout, summing over
    # every pixel) that XLA:CPU's matmul runs at ~25 GFLOP/s. A patch row of g neighbouring output
    # pixels (a kh x (kw+g-1) window every g columns) against their g*Cout gradients (the same memory,
    # reshaped) gives a (kh*(kw+g-1)) x (g*Cout) product whose g diagonal blocks sum to the kernel
    # gradient: twice the multiplies at g=4, but net2's first layer 2.1 ms against 2.5 alone and its
    # train step 2.8% faster (28x28x1, in-process A/B; g=2 2.1% slower than g=4; net1 1.00x). With 3
    # channels the plain form's 27 columns do better (net2 32x32x3 1.5% slower grouped).
    g = PIXEL_GROUP if cin == 1 and strides == (1, 1) and wo % PIXEL_GROUP == 0 else 1
    window, steps = (kh, kw + g - 1), (strides[0], strides[1] * g)
    # A strided layer's product is taken as dy^T @ patches, (Cout, kh*kw*Cin): a product summing over
    # the rows of both operands ran at 91-105 GFLOP/s, with the small dy chunk transposed first 115.
    # In the train step: net2 +5% (28x28x1), +2% (32x32x3), resnet20 1.00x. First layers (a few
    # patch columns) keep the plain form: transposed there too, net2 trained 4% slower.
    transposed = strides != (1, 1)

    def add_chunk(i, acc):
        xc, dyc = lax.dynamic_slice_in_dim(x, i * c, c), lax.dynamic_slice_in_dim(dy, i * c, c)
        if derivative is not None:
            dyc = dyc * derivative(lax.dynamic_slice_in_dim(y, i * c, c))
        patches = _patches(xc, window, steps, pads, (ho, wo // g))
        dyc = dyc.reshape(-1, g * cout)
        if transposed:
            prod = lax.dot(dyc.T, patches, preferred_element_type=jnp.float32)
        else:
            prod = lax.dot_general(patches, dyc, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        return acc[0] + prod, acc[1] + dyc.sum(0, dtype=jnp.float32)

    rows, cols = kh * (kw + g - 1) * cin, g * cout
    zero = (jnp.zeros((cols, rows) if transposed else (rows, cols), jnp.float32), jnp.zeros((cols,), jnp.float32))
    grad, bias_grad = add_chunk(0, zero) if c == n else lax.fori_loop(0, n // c, add_chunk, zero)
    grad = (grad.T if transposed else grad).reshape(kh, kw + g - 1, cin, g, cout)
    return sum(grad[:, r : r + kw, :, r] for r in range(g)), bias_grad.reshape(g, cout).sum(0)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _first_layer(x, kernel, bias, activation, strides, pads):
    return _few_channel_conv(x, kernel, strides, pads, lambda z: activate(activation, z + bias))


def _first_layer_fwd(x, kernel, bias, activation, strides, pads):
    y = _first_layer(x, kernel, bias, activation, strides, pads)
    return y, (x, kernel, y)


def _first_layer_bwd(activation, strides, pads, res, g):
    x, kernel, y = res
    derivative = ACTIVATIONS[activation][1] if activation else None  # None: linear, g passes through
    dw, db = _conv_kernel_grad(x, g, kernel.shape, strides, pads, y, derivative)
    dx = _input_grad(g if derivative is None else g * derivative(y), kernel, x.shape, strides, pads)
    return dx, dw.astype(kernel.dtype), db.astype(kernel.dtype)


_first_layer.defvjp(_first_layer_fwd, _first_layer_bwd)


def conv2d_act(x, kernel, bias, stride=1, padding="SAME", activation=None):
    """activate(activation, conv2d(x, kernel, bias, stride, padding)): Keras' Conv2D.

    A first layer (few input channels) computes the three in one pass per batch chunk, and its
    backward pass needs only the output: the activation's derivative is written in terms of it and
    applied chunk by chunk inside the kernel-gradient loop. The pre-activation and the gradient
    through the activation, each as large as the layer's output (the network's largest tensors),
    are never written out.
    """
    if _reference or kernel.shape[2] > SMALL_CIN or bias is None:
        return activate(activation, conv2d(x, kernel, bias, stride, padding))
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pads = _window_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    return _first_layer(x, kernel, bias, activation, strides, pads)


def conv2d(x, kernel, bias=None, stride=1, padding="SAME"):
    """2-D convolution of NHWC `x` with an HWIO `kernel` (+ bias), fast gradients on XLA:CPU.

    Same values and gradients as `lax.conv_general_dilated(x, kernel, (stride, stride), padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias`.
    """
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pads = _window_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    y = _conv2d(x, kernel, strides, pads)
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
    return _conv2d(lhs, rhs, tuple(window_strides), pads)


class Conv(nnx.Conv):
    """`nnx.Conv` (same arguments, parameters, initialisation, checkpoints) with `conv2d`'s fast gradients."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("conv_general_dilated", conv_general_dilated)
        super().__init__(*args, **kwargs)


# --- dense --------------------------------------------------------------------------------------

# From this many weights (4 MB in fp32) a dense layer takes `_dense`'s backward. Below, the product
# it saves is smaller than what the extra transpose and the ordering cost: the 784-512-512-10 MLP
# trained 2.8% slower with it (in-process A/B, batch 128).
DENSE_MIN_WEIGHTS = 1 << 20


def dense(x, weight):
    """x @ weight.T for an (out, in) `weight`: `Dense`'s product, same values and gradients."""
    return _dense(x, weight) if weight.size >= DENSE_MIN_WEIGHTS else x @ weight.T


@jax.custom_vjp
def _dense(x, weight):
    """Why a custom backward: autodiff's kernel gradient dy^T x contracts the leading (batch) axis
    of both operands, a product XLA:CPU gives to Eigen rather than YNNPACK, and Eigen is slow at
    power-of-two widths. Alone, 128 rows: 16384 columns (net2 on 32x32x3) 7.4 ms, 65536 (net1 on
    32x32x3) 39.8, 12544 (net2 on 28x28x1) 3.0, 50176 (net1) 13.5. With the small dy^T (128 x 128)
    written out first, behind an optimization barrier so that XLA cannot fold the transpose back
    into the product, it is a plain product on YNNPACK: 3.5 / 14.6 / 2.7 / 10.8 ms. (The barrier
    holds here, unlike before fusion in `_sum_of_slices`: XLA folds transposes into dots earlier.
    The compiled step shows it: a 128 x 128 transpose copy feeding the kernel gradient's YNNPACK
    fusion.)

    The input gradient waits for the kernel gradient: run side by side, the two products (and the
    convolution backward after them) contend for the two cores. Train step against autodiff's form
    (in-process A/B, batch 128): net1 +9.6% on 32x32x3, +0.9% on 28x28x1; net2 +6.6% / 0.99x;
    without the ordering net2 +3.1% / 0.97x.
    """
    return x @ weight.T


def _dense_fwd(x, weight):
    return _dense(x, weight), (x, weight)


def _dense_bwd(res, dy):
    x, weight = res
    dw = lax.optimization_barrier(dy.reshape(-1, dy.shape[-1]).T) @ x.reshape(-1, x.shape[-1])
    dw, dy = lax.optimization_barrier((dw, dy))
    return (dy @ weight).astype(x.dtype), dw.astype(weight.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


# --- pooling -----------------------------------------------------------------------------------


def _pool_geometry(shape, window: int, stride: int, padding: str):
    """Output (H, W) and ((lo, hi), (lo, hi)) pads of a square pooling window, as XLA computes them."""
    pads = _window_pads(shape[1:3], (window, window), (stride, stride), padding)
    return _out_hw(shape, (window, window), (stride, stride), pads), pads


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
    taken = jnp.zeros(out.shape, bool)
    dxp = jnp.zeros_like(xp)
    for i, j, tap in _taps(xp, (window, window), (stride, stride), out_hw):
        hit = (tap == out) & ~taken
        taken = taken | hit
        # Each output's share goes back to the input pixel it came from.
        dxp = dxp + _place(jnp.where(hit, g, 0.0), i, j, (stride, stride), xp.shape[1:3])
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
