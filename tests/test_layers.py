"""Every candidate formulation equals the plain op, values and gradients, in fp32 and bf16.

Tolerances. fp32: the candidates sum the same products in another order, so rounding differs by
~1e-7 per term; 1e-5 of the output's scale bounds it with room while any wrong tap, stride or
padding gives an O(1) error. bf16: both sides start from the same bf16-rounded operands, whose
products are exact in fp32 and are summed in fp32; what differs is the final rounding of an output
to bf16's 8-bit mantissa (at most 2^-9 of its value), so 2^-8 of the output's scale, still far
below a wrong tap's O(1). Pooling moves values without arithmetic: exact, except its gradient's
sums over overlapping windows (rounding only).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from cnncli import kernels, tuner
from cnncli.models import conv, dense, layers, ops

DN = ("NHWC", "HWIO", "NHWC")
TOL = {"float32": 1e-5, "bfloat16": 2.0**-8}
BF16 = jnp.bfloat16


def _close(got, want, rel=1e-5, name=""):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * float(np.abs(want).max()), err_msg=name)


def _data(shape, kshape, seed=0, dtype=jnp.float32):
    kx, kk, kb = jax.random.split(jax.random.key(seed), 3)
    x, k = jax.random.normal(kx, shape).astype(dtype), jax.random.normal(kk, kshape).astype(dtype)
    return x, k, jax.random.normal(kb, kshape[-1:])


def _plain_conv(x, k, strides, pads):
    """The reference: fp32 arithmetic on the (possibly bf16-rounded) operands."""
    return lax.conv_general_dilated(x.astype(jnp.float32), k.astype(jnp.float32), strides, pads,
                                    dimension_numbers=DN, precision=lax.Precision.HIGHEST)


@pytest.fixture
def forced(monkeypatch):
    """force(name): every `tuner.choose` answers `name` where it is a candidate, else XLA's op."""
    def force(name):
        monkeypatch.setattr(tuner, "choose", lambda op, key, cands, make: name if name in cands else next(iter(cands)))
        monkeypatch.setattr(tuner, "active", lambda: True)  # the oneDNN kernels are offered only when measuring
    return force


def _no_kernel(name, kind, dtype, *geometry) -> bool:
    """A oneDNN candidate this CPU has no real kernel for (bf16 without AVX-512): not offered, not tested."""
    return name == "onednn" and not kernels.fast(kernels.conv_geo(kind, dtype, *geometry))


# Strides 1-3, even and odd sizes and kernels, SAME / VALID / explicit uneven pads, 1-8 channels.
CONV_CASES = [
    (12, 3, 1, "SAME", 1), (9, 3, 2, "SAME", 3), (11, 5, 2, "VALID", 2), (8, 4, 2, "SAME", 8),
    (9, 1, 2, "SAME", 3), (10, 3, 3, "SAME", 8), (9, 3, 1, ((2, 0), (1, 1)), 3),
]


@pytest.mark.parametrize("size,kernel,stride,padding,cin,dtype",
                         [c + ("float32",) for c in CONV_CASES] + [c + ("bfloat16",) for c in CONV_CASES[:4]])
def test_conv_candidates_equal_lax(size, kernel, stride, padding, cin, dtype):
    """Each direction's every candidate: forward, input gradient, kernel gradient."""
    x, k, _ = _data((3, size, size + 1, cin), (kernel, kernel, cin, 6), dtype=dtype)
    strides = (stride, stride)
    pads = ops._window_pads(x.shape[1:3], k.shape[:2], strides, padding)
    want = _plain_conv(x, k, strides, pads)
    dy = jax.random.normal(jax.random.key(9), want.shape).astype(dtype)
    _, vjp = jax.vjp(lambda a, b: _plain_conv(a, b, strides, pads), x.astype(jnp.float32), k.astype(jnp.float32))
    dx_want, dw_want = vjp(dy.astype(jnp.float32))
    tol = TOL[dtype]
    geometry = (x.shape, k.shape, want.shape[1:3], strides, pads)
    for name, fn in conv.CONV_FWD.items():
        if _no_kernel(name, kernels.CONV_FWD, dtype, *geometry):
            continue
        got = jax.jit(fn, static_argnums=(2, 3))(x, k, strides, pads)
        assert got.dtype == x.dtype, name
        _close(got, want, tol, name)
    for name, fn in conv.IGRAD.items():
        if name.startswith("im2col") and stride > 1 or _no_kernel(name, kernels.CONV_BWD_DATA, dtype, *geometry):
            continue  # im2col: the stride-1 identity only
        _close(jax.jit(fn, static_argnums=(2, 3, 4))(dy, k, x.shape, strides, pads), dx_want, tol, name)
    for name, fn in conv.KGRAD.items():
        if name == "grouped" and not (cin == 1 and stride == 1 and want.shape[2] % conv.PIXEL_GROUP == 0):
            continue
        if _no_kernel(name, kernels.CONV_BWD_WEIGHTS, dtype, *geometry):
            continue
        _close(jax.jit(fn, static_argnums=(2, 3, 4))(x, dy, k.shape, strides, pads), dw_want, tol, name)


@pytest.mark.parametrize("name", ["xla", "im2col", "slices", "phases", "col2im", "im2col_t", "grouped", "onednn"])
@pytest.mark.parametrize("stride,cin", [(1, 1), (2, 3), (1, 8)])
def test_conv2d_through_the_tuner_equals_lax(forced, name, stride, cin):
    """The layer as models call it (custom gradient, bias, activation) with each choice forced."""
    forced(name)
    x, k, b = _data((4, 9, 12, cin), (3, 3, cin, 5), seed=3)

    def plain(x, k, b):
        return jax.nn.relu(lax.conv_general_dilated(x, k, (stride, stride), "SAME", dimension_numbers=DN) + b)

    def fast(x, k, b):
        return layers.conv2d_act(x, k, b, stride, "SAME", "relu")

    _close(jax.jit(fast)(x, k, b), plain(x, k, b))
    w = jax.random.normal(jax.random.key(4), plain(x, k, b).shape)
    want = jax.grad(lambda *a: (plain(*a) * w).sum(), (0, 1, 2))(x, k, b)
    got = jax.jit(jax.grad(lambda *a: (fast(*a) * w).sum(), (0, 1, 2)))(x, k, b)
    for g, g_want in zip(got, want):
        _close(g, g_want)


# One image per chunk, or 3 of a batch of 6: the chunked loops sum the same as one pass.
@pytest.mark.parametrize("images,stride,cin", [(1, 1, 3), (1, 2, 8), (3, 1, 1), (3, 2, 8)])
def test_convolution_summed_over_batch_chunks(monkeypatch, images, stride, cin):
    out = 8 // stride
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1 if images == 1 else images * out * out * max(9 * cin, 5) * 4)
    x, k, _ = _data((6, 8, 8, cin), (3, 3, cin, 5), seed=1)
    assert conv._patch_chunk(6, (out, out), k.shape, 4) == images
    assert (conv._chunk(6, 3), conv._chunk(7, 3), conv._chunk(1, 0)) == (3, 1, 1)  # divisors, at least 1
    pads = ops._window_pads(x.shape[1:3], (3, 3), (stride, stride), "SAME")
    want = _plain_conv(x, k, (stride, stride), pads)
    dy = jax.random.normal(jax.random.key(2), want.shape)
    dw_want = jax.vjp(lambda b: _plain_conv(x, b, (stride, stride), pads), k)[1](dy)[0]
    _close(conv._fwd_im2col(x, k, (stride, stride), pads), want)
    _close(conv._kgrad_patches(x, dy, k.shape, (stride, stride), pads), dw_want)
    _close(conv._kgrad_patches(x, dy, k.shape, (stride, stride), pads, transposed=True), dw_want)


@pytest.mark.parametrize("group", [2, 4])
@pytest.mark.parametrize("kernel,padding", [(3, "SAME"), (5, "VALID"), (2, "SAME"), (3, ((2, 0), (1, 1)))])
def test_single_channel_kernel_gradient_by_pixel_groups(monkeypatch, group, kernel, padding):
    """A 1-channel layer's kernel gradient from patches of `group` neighbouring pixels (output widths
    12 and 8 are multiples of both groups), 2 images a chunk."""
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)
    x, k, _ = _data((4, 9, 12, 1), (kernel, kernel, 1, 5), seed=5)
    pads = ops._window_pads(x.shape[1:3], (kernel, kernel), (1, 1), padding)
    want = _plain_conv(x, k, (1, 1), pads)
    assert want.shape[2] % group == 0
    dy = jax.random.normal(jax.random.key(6), want.shape)
    dw_want = jax.vjp(lambda b: _plain_conv(x, b, (1, 1), pads), k)[1](dy)[0]
    _close(conv._kgrad_patches(x, dy, k.shape, (1, 1), pads, group=group), dw_want)


@pytest.mark.parametrize("size,kernel,stride,padding", [
    (9, 3, 2, "SAME"), (10, 3, 2, "SAME"), (11, 5, 2, "VALID"), (12, 3, 2, "VALID"), (8, 4, 2, "SAME"),
    (10, 3, 3, "SAME"), (11, 2, 3, "VALID"), (9, 1, 2, "SAME"), (9, 3, 1, ((2, 0), (1, 1))),
])
def test_patches_are_im2col(size, kernel, stride, padding):
    """Row (n, h, w) of the patch matrix is the padded input's window at (stride*h, stride*w), in (i, j, cin)
    order, for block sizes that split, cover or overrun the kernel (copies only: exact)."""
    x = np.asarray(jax.random.normal(jax.random.key(3), (2, size, size + 1, 3)))
    pads = ops._window_pads(x.shape[1:3], (kernel, kernel), (stride, stride), padding)
    out_hw = ops._out_hw(x.shape, (kernel, kernel), (stride, stride), pads)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    want = np.stack([xp[n, stride * h : stride * h + kernel, stride * w : stride * w + kernel].ravel()
                     for n in range(2) for h in range(out_hw[0]) for w in range(out_hw[1])])
    got = jax.jit(conv._patches, static_argnums=(1, 2, 3, 4))(x, (kernel, kernel), (stride, stride), pads, out_hw)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_registry_activation_names_are_the_layers():
    """The registry's names (kept jax-free for `cnn --help`) are the activations layers.py can run."""
    from cnncli.models.registry import ACTIVATION_CHOICES

    assert set(ACTIVATION_CHOICES) == set(layers.ACTIVATIONS)


def test_conv_module_is_nnx_conv_with_tuned_forms():
    fast = layers.Conv(3, 8, (3, 3), (2, 2), padding="SAME", rngs=nnx.Rngs(0))
    plain = nnx.Conv(3, 8, (3, 3), (2, 2), padding="SAME", rngs=nnx.Rngs(0))
    # Same parameter names, shapes and initial values: checkpoints move between the two.
    assert jax.tree.map(jnp.shape, nnx.state(fast, nnx.Param)) == jax.tree.map(jnp.shape, nnx.state(plain, nnx.Param))
    np.testing.assert_array_equal(fast.kernel[...], plain.kernel[...])
    x = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
    _close(fast(x), plain(x))

    def loss(m, x):
        return (m(x) ** 2).sum()

    g_fast, g_plain = nnx.grad(loss)(fast, x), nnx.grad(loss)(plain, x)
    _close(g_fast["kernel"][...], g_plain["kernel"][...])
    _close(g_fast["bias"][...], g_plain["bias"][...])


def test_conv_hook_falls_back_to_lax_for_other_convolutions():
    x, k, _ = _data((2, 9, 9, 4), (3, 3, 2, 6))
    grouped = layers.conv_general_dilated(x, k, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DN,
                                          feature_group_count=2)
    want = lax.conv_general_dilated(x, k, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=DN,
                                    feature_group_count=2)
    np.testing.assert_array_equal(grouped, want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(dense.DENSE_KGRAD))
@pytest.mark.parametrize("x_shape", [(5, 7), (2, 3, 7)])
def test_dense_values_and_gradients_equal_matmul(forced, name, x_shape, dtype):
    """Each kernel-gradient form through the layer; a 3-D input (leading axes folded into the batch)
    checks the reshapes."""
    forced(name)
    kx, kw, kg = jax.random.split(jax.random.key(4), 3)
    x, wt = jax.random.normal(kx, x_shape).astype(dtype), jax.random.normal(kw, (4, 7)).astype(dtype)  # (out, in)
    g = jax.random.normal(kg, (*x_shape[:-1], 4)).astype(dtype)

    def plain(x, w):
        return jnp.matmul(x.astype(jnp.float32), w.astype(jnp.float32).T, precision="highest")

    out = jax.jit(layers.dense)(x, wt)
    assert out.dtype == x.dtype
    _close(out, plain(x, wt), TOL[dtype])
    got = jax.jit(jax.vjp(layers.dense, x, wt)[1])(g)
    want = jax.vjp(plain, x.astype(jnp.float32), wt.astype(jnp.float32))[1](g.astype(jnp.float32))
    for a, b in zip(got, want):
        _close(a, b, TOL[dtype])


@pytest.mark.parametrize("name", ["xla", "slices", "place", "onednn"])
@pytest.mark.parametrize("window,stride,padding", [(2, 1, "SAME"), (2, 2, "VALID"), (3, 2, "SAME"), (2, 2, "SAME"),
                                                   (3, 1, "VALID")])
def test_max_pool_values_and_gradients_equal_reduce_window(forced, name, window, stride, padding):
    forced(name)
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3))
    # relu makes most windows tie at 0, and rounding to integers makes ties among positives too:
    # the gradient must go to the same (first) maximum as select-and-scatter's.
    for inp in (x, jax.nn.relu(x), jnp.round(2 * x), x.astype(BF16)):
        def plain(v):
            return nnx.max_pool(v, (window, window), (stride, stride), padding)

        def fast(v):
            return layers.max_pool(v, window, stride, padding)

        np.testing.assert_array_equal(jax.jit(fast)(inp), plain(inp))
        w = jax.random.normal(jax.random.key(3), plain(inp).shape).astype(inp.dtype)
        _close(jax.jit(jax.grad(lambda v: (fast(v) * w).sum()))(inp), jax.grad(lambda v: (plain(v) * w).sum())(inp),
               rel=1e-6 if inp.dtype == jnp.float32 else 2.0**-7)


def test_plain_ops_have_no_custom_gradients():
    """Under `reference_ops` (export, FLOP counts) a layer traces to plain lax ops only."""
    x, k, b = _data((2, 8, 8, 3), (3, 3, 3, 4))
    def net(x):
        y = layers.max_pool(layers.conv2d_act(x, k, b, 1, "SAME", "relu"))
        return layers.dense(y.reshape(2, -1), jnp.ones((5, 64)))
    with layers.reference_ops():
        text = str(jax.make_jaxpr(net)(x))
    assert "custom_vjp" not in text and "optimization_barrier" not in text and "while" not in text
    assert "conv_general_dilated" in text and "reduce_window_max" in text


@pytest.mark.parametrize("name", ["xla", "onednn"])
def test_avg_pool_equals_nnx(forced, name):
    forced(name)
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3))
    w = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    _close(jax.jit(lambda v: layers.avg_pool(v, 2, 2))(x), nnx.avg_pool(x, (2, 2), (2, 2)), rel=1e-6)
    _close(jax.jit(jax.grad(lambda v: (layers.avg_pool(v, 3, 2) * w).sum()))(x),
           jax.grad(lambda v: (nnx.avg_pool(v, (3, 3), (2, 2)) * w).sum())(x), rel=1e-6)
