"""The fast layer formulations equal the plain ones: values and gradients.

Tolerances: pooling runs the very same XLA ops as the reference, so its values must match exactly.
The convolutions (a sum of shifted slices for few input channels, phase convolutions or matmul +
col2im for a strided input gradient, im2col + matmul for the kernel gradient when strided or of few
channels) sum the same products in another order, so fp32 rounding differs: relative error ~1e-7
per term, 1e-5 of the output's scale bounds it with room while still catching any wrong tap, stride
or padding (those give O(1) errors). Max-pool's gradient adds the shares of overlapping windows in
another order (rounding only, 1e-6), while a tie sent to the wrong pixel would be an O(1) error.
The dense layer's gradients are autodiff's products, summed in another order: 1e-5 too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from cnncli.models import layers

DN = ("NHWC", "HWIO", "NHWC")


def _close(got, want, rel=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * float(np.abs(want).max()))


def _data(shape, kshape, seed=0):
    kx, kk, kb = jax.random.split(jax.random.key(seed), 3)
    return jax.random.normal(kx, shape), jax.random.normal(kk, kshape), jax.random.normal(kb, kshape[-1:])


# cin 1, 2: sum of shifted slices; 3: im2col + matmul; 8: lax conv (strided: own gradients)
@pytest.mark.parametrize("cin", [1, 2, 3, 8])
@pytest.mark.parametrize("size,kernel,stride,padding", [
    (12, 3, 1, "SAME"), (9, 3, 2, "SAME"), (10, 3, 2, "SAME"), (9, 3, 1, "VALID"),
    (11, 5, 2, "VALID"), (8, 4, 2, "SAME"), (7, 1, 1, "SAME"), (9, 1, 2, "SAME"), (10, 3, 3, "SAME"),
    (9, 3, 1, ((2, 0), (1, 1))),
])
def test_conv2d_values_and_gradients_equal_lax(monkeypatch, size, kernel, stride, padding, cin):
    x, k, b = _data((3, size, size + 1, cin), (kernel, kernel, cin, 6))

    def plain(x, k, b):
        return lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=DN) + b

    def fast(x, k, b):
        return layers.conv2d(x, k, b, stride, padding)

    _close(jax.jit(fast)(x, k, b), plain(x, k, b))
    # A non-uniform cotangent, so every output pixel's gradient path counts differently.
    w = jax.random.normal(jax.random.key(9), plain(x, k, b).shape)
    g_plain = jax.grad(lambda *a: (plain(*a) * w).sum(), (0, 1, 2))(x, k, b)
    for phase_min in (0, 10**9) if stride > 1 else (0,):  # the strided input gradient's two forms
        monkeypatch.setattr(layers, "PHASE_MIN_PIXELS", phase_min)
        g_fast = jax.jit(jax.grad(lambda *a: (fast(*a) * w).sum(), (0, 1, 2)))(x, k, b)
        for got, want in zip(g_fast, g_plain):
            _close(got, want)


@pytest.mark.parametrize("size,kernel,stride,padding", [
    (9, 3, 2, "SAME"), (10, 3, 2, "SAME"), (11, 5, 2, "VALID"), (12, 3, 2, "VALID"), (8, 4, 2, "SAME"),
    (10, 3, 3, "SAME"), (11, 2, 3, "VALID"), (9, 1, 2, "SAME"), (9, 3, 1, ((2, 0), (1, 1))),
])
def test_patches_are_im2col(size, kernel, stride, padding):
    """Row (n, h, w) of the patch matrix is the padded input's window at (stride*h, stride*w), in (i, j, cin)
    order, for block sizes that split, cover or overrun the kernel (copies only: exact)."""
    x = np.asarray(jax.random.normal(jax.random.key(3), (2, size, size + 1, 3)))
    pads = layers._window_pads(x.shape[1:3], (kernel, kernel), (stride, stride), padding)
    out_hw = layers._out_hw(x.shape, (kernel, kernel), (stride, stride), pads)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    want = np.stack([xp[n, stride * h : stride * h + kernel, stride * w : stride * w + kernel].ravel()
                     for n in range(2) for h in range(out_hw[0]) for w in range(out_hw[1])])
    got = jax.jit(layers._patches, static_argnums=(1, 2, 3, 4))(x, (kernel, kernel), (stride, stride), pads, out_hw)
    np.testing.assert_array_equal(np.asarray(got), want)


# The chunked forms: the kernel gradient of a first layer (stride 1, 3 channels) and of a strided
# layer, and the strided input gradient; one image per chunk, or 3 of a batch of 6.
@pytest.mark.parametrize("images,stride,cin", [(1, 1, 3), (1, 2, 8), (3, 1, 3), (3, 2, 8)])
def test_convolution_summed_over_batch_chunks(monkeypatch, images, stride, cin):
    """Chunked forms give the same values and gradients as the plain convolution."""
    out = 8 // stride
    monkeypatch.setattr(layers, "CHUNK_BYTES", 1 if images == 1 else images * out * out * 9 * cin * 4)
    x, k, _ = _data((6, 8, 8, cin), (3, 3, cin, 5), seed=1)
    assert layers._patch_chunk(6, (out, out), k.shape, 4) == images
    assert (layers._chunk(6, 3), layers._chunk(7, 3), layers._chunk(1, 0)) == (3, 1, 1)  # divisors, at least 1

    def plain(x, k):
        return lax.conv_general_dilated(x, k, (stride, stride), "SAME", dimension_numbers=DN)

    w = jax.random.normal(jax.random.key(2), plain(x, k).shape)
    _close(jax.jit(lambda x, k: layers.conv2d(x, k, stride=stride))(x, k), plain(x, k))
    want = jax.grad(lambda x, k: (plain(x, k) * w).sum(), (0, 1))(x, k)
    got = jax.jit(jax.grad(lambda x, k: (layers.conv2d(x, k, stride=stride) * w).sum(), (0, 1)))(x, k)
    for g, g_want in zip(got, want):
        _close(g, g_want)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("cin,stride,chunk_images", [(1, 1, 2), (2, 1, 3), (3, 1, 6), (3, 2, 3), (8, 2, 6)])
def test_conv2d_act_equals_conv_then_activation(monkeypatch, activation, cin, stride, chunk_images):
    """A first layer's fused conv + bias + activation (cin 1-2 as slices, 3 as patches; its backward
    from the output alone), and the unfused path (cin 8): values and gradients of x, kernel and bias
    as the plain ops give them. Batches of 6 run in forward chunks of 3 images (slices) or
    `chunk_images` (patches), and `chunk_images` per kernel-gradient chunk."""
    x, k, b = _data((6, 9, 9, cin), (3, 3, cin, 5), seed=3)
    out = -(-9 // stride)
    monkeypatch.setattr(layers, "CHUNK_BYTES", chunk_images * out * out * 9 * cin * 4)
    assert layers._patch_chunk(6, (out, out), k.shape, 4) == chunk_images
    fn = {None: lambda z: z, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}[activation]

    def plain(x, k, b):
        return fn(lax.conv_general_dilated(x, k, (stride, stride), "SAME", dimension_numbers=DN) + b)

    def fast(x, k, b):
        return layers.conv2d_act(x, k, b, stride, "SAME", activation)

    _close(jax.jit(fast)(x, k, b), plain(x, k, b))
    w = jax.random.normal(jax.random.key(4), plain(x, k, b).shape)
    want = jax.grad(lambda *a: (plain(*a) * w).sum(), (0, 1, 2))(x, k, b)
    got = jax.jit(jax.grad(lambda *a: (fast(*a) * w).sum(), (0, 1, 2)))(x, k, b)
    for g, g_want in zip(got, want):
        _close(g, g_want)


@pytest.mark.parametrize("group", [2, 4])
@pytest.mark.parametrize("kernel,padding", [(3, "SAME"), (5, "VALID"), (2, "SAME"), (3, ((2, 0), (1, 1)))])
def test_single_channel_kernel_gradient_by_pixel_groups(monkeypatch, group, kernel, padding):
    """A 1-channel layer's kernel and bias gradients from patches of `group` neighbouring pixels
    (the output widths, 12 and 8, are multiples of both groups) equal the plain ones; 2 images a chunk."""
    monkeypatch.setattr(layers, "PIXEL_GROUP", group)
    monkeypatch.setattr(layers, "CHUNK_BYTES", 1)
    x, k, b = _data((4, 9, 12, 1), (kernel, kernel, 1, 5), seed=5)
    shape = lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN).shape
    assert shape[2] % group == 0

    def plain(x, k, b):
        return jax.nn.relu(lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=DN) + b)

    w = jax.random.normal(jax.random.key(6), shape)
    want = jax.grad(lambda *a: (plain(*a) * w).sum(), (1, 2))(x, k, b)
    got = jax.jit(jax.grad(lambda *a: (layers.conv2d_act(x, *a, 1, padding, "relu") * w).sum(), (0, 1)))(k, b)
    for g, g_want in zip(got, want):
        _close(g, g_want)


def test_every_activation_name_has_its_derivative():
    """The registry's names (kept jax-free for `cnn --help`) are the activations layers.py can run."""
    from cnncli.models.registry import ACTIVATION_CHOICES

    assert set(ACTIVATION_CHOICES) == set(layers.ACTIVATIONS)


def test_conv_module_is_nnx_conv_with_fast_gradients():
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


# min_weights 0: every layer takes _dense's backward; 10**9: none does (autodiff's). A 3-D input
# (leading axes folded into the batch) checks the kernel gradient's reshape.
@pytest.mark.parametrize("min_weights", [0, 10**9])
@pytest.mark.parametrize("x_shape", [(5, 7), (2, 3, 7)])
def test_dense_values_and_gradients_equal_matmul(monkeypatch, min_weights, x_shape):
    monkeypatch.setattr(layers, "DENSE_MIN_WEIGHTS", min_weights)
    kx, kw, kg = jax.random.split(jax.random.key(4), 3)
    x, wt = jax.random.normal(kx, x_shape), jax.random.normal(kw, (4, 7))  # (out, in)
    g = jax.random.normal(kg, (*x_shape[:-1], 4))
    _close(jax.jit(layers.dense)(x, wt), x @ wt.T)
    fast = jax.jit(jax.grad(lambda *a: (layers.dense(*a) * g).sum(), (0, 1)))(x, wt)
    plain = jax.grad(lambda *a: ((a[0] @ a[1].T) * g).sum(), (0, 1))(x, wt)
    for got, want in zip(fast, plain):
        _close(got, want)


@pytest.mark.parametrize("window,stride,padding", [(2, 1, "SAME"), (2, 2, "VALID"), (3, 2, "SAME"), (2, 2, "SAME"),
                                                   (3, 1, "VALID")])
def test_max_pool_values_and_gradients_equal_reduce_window(window, stride, padding):
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3))
    # relu makes most windows tie at 0, and rounding to integers makes ties among positives too:
    # the gradient must go to the same (first) maximum as select-and-scatter's.
    for inp in (x, jax.nn.relu(x), jnp.round(2 * x)):
        def plain(v):
            return nnx.max_pool(v, (window, window), (stride, stride), padding)

        def fast(v):
            return layers.max_pool(v, window, stride, padding)

        np.testing.assert_array_equal(jax.jit(fast)(inp), plain(inp))
        w = jax.random.normal(jax.random.key(3), plain(inp).shape)
        _close(jax.jit(jax.grad(lambda v: (fast(v) * w).sum()))(inp), jax.grad(lambda v: (plain(v) * w).sum())(inp),
               rel=1e-6)


def test_avg_pool_equals_nnx():
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 3))
    _close(layers.avg_pool(x, 2, 2), nnx.avg_pool(x, (2, 2), (2, 2)), rel=1e-6)
    _close(jax.grad(lambda v: layers.avg_pool(v, 3, 2).sum())(x),
           jax.grad(lambda v: nnx.avg_pool(v, (3, 3), (2, 2)).sum())(x), rel=1e-6)
