"""oneDNN's kernels (cnncli/kernels) against XLA's plain ops, for every convolution and pooling
geometry the registered networks have, at batch 2, values and gradients, fp32 and bf16 (bf16 only
where this CPU has a real bf16 kernel); and what happens when the library cannot be had.

Tolerances as in test_layers.py: fp32 sums the same products in another order (1e-5 of the scale),
bf16 differs by the final rounding of an output (2^-8 of the scale); a wrong tap, stride or pad is O(1).
"""

import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnncli import kernels, tuner
from cnncli.kernels import build
from cnncli.models import conv, layers, pooling
from cnncli.models.registry import ARCHS

TOL = {"float32": 1e-5, "bfloat16": 2.0**-8}
LINUX_X86 = sys.platform == "linux" and platform.machine() == "x86_64"
SHAPES = [(28, 28, 1), (32, 32, 3), (128, 128, 3)]  # MNIST, CIFAR-10, the photo sets


def _geometries():
    """(kind, x shape, window or kernel shape, strides, pads) of every conv / pool layer configuration
    the registry's networks have on the data sets' shapes, at the smallest input size it meets (the
    same channels, window, stride and pads at a larger size run the same code here: 187 layers are 49
    configurations, and testing each size would cost minutes of the suite's compiles). Found by
    tracing the networks abstractly with the layers' entry points spied on."""
    from flax import nnx

    seen = {}

    def add(what, x_shape, window, strides, pads):
        key = (what, x_shape[3], window, strides, pads)
        if key not in seen or x_shape[1] * x_shape[2] < seen[key][1][1] * seen[key][1][2]:
            seen[key] = (what, (2, *x_shape[1:]), window, strides, pads)

    def spy_conv(x, kernel, strides, pads):
        add("conv", x.shape, tuple(kernel.shape), strides, pads)
        return conv._fwd_xla(x, kernel, strides, pads)

    def spy_max(x, window, stride, padding):
        add("max", x.shape, (window, window), (stride, stride), pooling._pool_geometry(x.shape, window, stride, padding)[1])
        return pooling._pool_xla(x, window, stride, padding)

    def spy_avg(x, window, stride):
        add("avg", x.shape, (window, window), (stride, stride), ((0, 0), (0, 0)))
        return pooling._avg_slices(x, window, stride)

    mp = pytest.MonkeyPatch()
    mp.setattr(conv, "_conv_forward", spy_conv)
    mp.setattr(pooling, "_max_pool", spy_max)
    mp.setattr(pooling, "_avg_pool", spy_avg)
    try:
        for spec in ARCHS.values():
            for shape in SHAPES:
                def run(spec=spec, shape=shape):
                    model = spec.build(shape, 10, activation=spec.activation, dropout=spec.dropout or 0.0,
                                       rngs=nnx.Rngs(0))
                    return model(jnp.zeros((2, *shape)))
                try:
                    jax.eval_shape(run)
                except Exception:  # noqa: BLE001 - an input this network does not take
                    continue
    finally:
        mp.undo()
    return sorted(seen.values(), key=repr)


GEOMETRIES = _geometries() if LINUX_X86 else []


def test_the_library_builds_and_loads_here():
    """On x86-64 Linux the oneDNN wheel is a dependency: a missing kernel library is a failure, not a skip."""
    if not LINUX_X86:
        pytest.skip("oneDNN's PyPI wheels are for x86-64 Linux")
    assert kernels.available(), kernels.why_not()
    assert "oneDNN 3." in kernels.version()
    assert len(GEOMETRIES) >= 30  # every network's layers were found (49 configurations in 13 networks)


def _rand(shape, dtype, seed):
    """Made by numpy (ml_dtypes for bf16): jax.random would compile a program per shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32).astype(jnp.dtype(dtype)))


def _fast(kind, dtype, *geo):
    return kernels.fast(kernels.conv_geo(kind, dtype, *geo) if len(geo[1]) == 4 else kernels.pool_geo(kind, dtype, *geo))


def _windows(xp, window, strides, out_hw):
    """(N, Ho, Wo, C, kh, kw): the input pixels each output pixel sees."""
    v = np.lib.stride_tricks.sliding_window_view(xp, window, axis=(1, 2))
    return v[:, : (out_hw[0] - 1) * strides[0] + 1 : strides[0], : (out_hw[1] - 1) * strides[1] + 1 : strides[1]]


def _scatter(per_tap, x_shape, window, strides, pads):
    """The adjoint of `_windows`: per_tap(i, j) -> (N, Ho, Wo, C) added back at its input pixels."""
    (pt, pb), (pl, pr) = pads
    dxp = np.zeros((x_shape[0], x_shape[1] + pt + pb, x_shape[2] + pl + pr, x_shape[3]))
    for i in range(window[0]):
        for j in range(window[1]):
            v = per_tap(i, j)
            dxp[:, i : i + (v.shape[1] - 1) * strides[0] + 1 : strides[0],
                j : j + (v.shape[2] - 1) * strides[1] + 1 : strides[1]] += v
    return dxp[:, pt : pt + x_shape[1], pl : pl + x_shape[2]]


def _reference(what, x, k, dy, window, strides, pads, out_hw):
    """float64 numpy: forward, input gradient (and kernel gradient), from the same (rounded) operands.
    A reference of its own: XLA's convolution gradients took ~2 s each to compile, 58 times."""
    (pt, pb), (pl, pr) = pads
    fill = -np.inf if what == "max" else 0.0
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
    win = _windows(xp, window[:2], strides, out_hw)
    if what == "conv":
        y = np.einsum("nhwcij,ijco->nhwo", win, k, optimize=True)
        dk = np.einsum("nhwcij,nhwo->ijco", win, dy, optimize=True)
        return y, _scatter(lambda i, j: dy @ k[i, j].T, x.shape, window, strides, pads), dk
    if what == "avg":
        n = window[0] * window[1]
        return win.mean(axis=(4, 5)), _scatter(lambda i, j: dy / n, x.shape, window, strides, pads)
    flat = win.reshape(*win.shape[:4], -1)
    first = flat.argmax(-1)  # the first maximum in row-major window order, as select-and-scatter
    return flat.max(-1), _scatter(lambda i, j: np.where(first == i * window[1] + j, dy, 0.0), x.shape, window,
                                  strides, pads)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: f"{g[0]}{g[1][1:]}-{g[2]}-s{g[3][0]}-{g[4]}")
def test_kernel_equals_xla(geo, dtype):
    """Forward and both gradients (pooling: forward and gradient) against a float64 reference on the
    same operands (XLA's plain ops give the same: test_layers.py), all kernels in one compiled program."""
    what, x_shape, window, strides, pads = geo
    conv, avg = what == "conv", what == "avg"
    f32 = np.float32
    out_hw = tuple((x_shape[1 + a] + sum(pads[a]) - window[a]) // strides[a] + 1 for a in range(2))
    if conv:
        kinds = (kernels.CONV_FWD, kernels.CONV_BWD_DATA, kernels.CONV_BWD_WEIGHTS)
    else:
        kinds = (kernels.AVG_FWD, kernels.AVG_BWD) if avg else (kernels.MAX_FWD, kernels.MAX_BWD)
    if not all(_fast(kd, dtype, x_shape, window, out_hw, strides, pads) for kd in kinds):
        assert dtype == "bfloat16", "fp32 has a real oneDNN kernel on every x86-64 CPU"
        pytest.skip("no bf16 kernel for this layer on this CPU (not offered to the tuner)")
    x = _rand(x_shape, dtype, 0)
    k = _rand(window, dtype, 1) if conv else None
    dy = _rand((x_shape[0], *out_hw, window[3] if conv else x_shape[3]), dtype, 2)
    b = _rand(window[3:], "float32", 3) if conv else None
    fused = conv and _fast(kernels.CONV_FWD_BIAS_RELU, dtype, x_shape, window, out_hw, strides, pads)

    @jax.jit
    def run(x, dy, k, b):
        if conv:
            return (kernels.conv_fwd(x, k, out_hw, strides, pads), kernels.conv_bwd_data(dy, k, x_shape, strides, pads),
                    kernels.conv_bwd_weights(x, dy, window, strides, pads)) + (
                    (kernels.conv_fwd_bias(x, k, b, out_hw, strides, pads, relu=True),) if fused else ())
        return (kernels.pool_fwd(x, int(avg), window, out_hw, strides, pads),
                kernels.pool_bwd(x, dy, int(avg), window, strides, pads))

    gots = run(x, dy, k, b)
    assert [g.dtype for g in gots] == [x.dtype, x.dtype] + ([jnp.float32] if conv else []) + ([x.dtype] if fused else [])
    as64 = (lambda a: None if a is None else np.asarray(a, np.float64))
    wants = _reference(what, as64(x), as64(k), as64(dy), window, strides, pads, out_hw)
    if fused:  # the bias and ReLU as post-ops
        wants = (*wants, np.maximum(wants[0] + as64(b), 0.0))
    tol = TOL[dtype] if conv or avg else 0.0  # a maximum moves values: exact (its gradient may sum)
    for name, g, w in zip(("forward", "input gradient", "kernel gradient", "forward + bias, ReLU"), gots, wants):
        np.testing.assert_allclose(np.asarray(g, f32), w.astype(f32), rtol=0, err_msg=name,
                                   atol=max(tol, 1e-6 if name != "forward" else 0.0) * float(np.abs(w).max()))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("stride,cin", [(1, 3), (2, 8)])
def test_the_fused_layer_has_the_plain_layers_values_and_gradients(monkeypatch, relu, stride, cin):
    """conv2d_act in its one-pass form (the tuner's choice forced): its custom gradient (ReLU's mask
    from the output, the bias summed) equals autodiff of XLA's plain convolution + bias + ReLU; and
    with the input not differentiated (a network's first layer) no input gradient is asked for."""
    if not LINUX_X86:
        pytest.skip("oneDNN's PyPI wheels are for x86-64 Linux")
    assert kernels.available(), kernels.why_not()  # registers the targets; the other forms stay XLA's (CNN_TUNE=0)
    monkeypatch.setattr(conv, "_fused", lambda *a: True)
    asked = []
    real_igrad = conv._input_grad
    monkeypatch.setattr(conv, "_input_grad", lambda *a: asked.append(1) or real_igrad(*a))
    x, k, b = _rand((2, 9, 9, cin), "float32", 0), _rand((3, 3, cin, 4), "float32", 1), _rand((4,), "float32", 2)
    act = "relu" if relu else None

    def loss(x, k, b):  # weights every output differently, so that a misplaced gradient shows
        y = layers.conv2d_act(x, k, b, stride, "SAME", act)
        return jnp.sum(y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)

    got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, k, b)
    with tuner.plain():
        want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, k, b)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(np.abs(w).max()))
    assert asked
    asked.clear()
    first = jax.jit(jax.grad(loss, argnums=(1, 2)))(x, k, b)
    assert not asked
    np.testing.assert_allclose(first[0], want[1][1], rtol=0, atol=1e-5 * float(np.abs(want[1][1]).max()))


def test_no_onednn_is_one_note_and_xla_forms(monkeypatch, tmp_path):
    """The library hidden: `cnn train` measures XLA's forms only and says why in one line."""
    env = {"CNN_ONEDNN_PREFIX": str(tmp_path / "none"), "CNN_TUNE": "1", "CNN_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "cnncli.cli", "train", "--dataset", "digits", "--arch", "net2",
                        "--epochs", "1", "--out", tmp_path / "runs", "--name", "r"],
                       env={**__import__("os").environ, **env}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "oneDNN" in ln]
    assert notes == [f"note: oneDNN kernels not used (oneDNN not found under $CNN_ONEDNN_PREFIX="
                     f"{tmp_path / 'none'} (pip install onednn-cpu-gomp onednn-devel-cpu-gomp)); layers use XLA's "
                     f"forms only"], r.stderr
    table = (tmp_path / "cache" / "tuning.json").read_text()
    assert '"conv_fwd' in table and "onednn" not in table


def test_a_failed_build_says_why(monkeypatch, tmp_path):
    if not LINUX_X86:
        pytest.skip("oneDNN's PyPI wheels are for x86-64 Linux")
    monkeypatch.setenv("CNN_KERNELS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(build.BuildError, match="g\\+\\+ failed"):
        build.library()
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))


def test_no_kernel_is_offered_when_the_tuner_does_not_measure(monkeypatch):
    """CNN_TUNE=0, export's plain ops: the layers never build or ask the library."""
    monkeypatch.setattr(kernels, "load", lambda: pytest.fail("the library was asked for"))
    kernels.impl.cache_clear()
    x = jnp.ones((2, 8, 8, 3))
    with tuner.plain():
        jax.jit(lambda v: layers.conv2d(v, jnp.ones((3, 3, 3, 4))))(x)
    monkeypatch.setenv("CNN_TUNE", "0")
    jax.jit(lambda v: layers.max_pool(layers.conv2d(v, jnp.ones((3, 3, 3, 4)))))(x)


def test_off_offers_no_kernel():
    if not LINUX_X86:
        pytest.skip("oneDNN's PyPI wheels are for x86-64 Linux")
    geo = kernels.conv_geo(kernels.CONV_FWD, "float32", (2, 8, 8, 3), (3, 3, 3, 4), (8, 8), (1, 1), ((1, 1), (1, 1)))
    assert kernels.fast(geo)
    with kernels.off():
        assert not kernels.fast(geo)
    assert kernels.fast(geo)


def test_the_whole_step_decides_whether_the_kernels_run(monkeypatch, fresh_cache):
    """tuner.kernels_in_step: the train step timed with its ops' oneDNN choices and with XLA's forms
    only; the faster is kept per host and key, and the step traced 'without' offers no kernel."""
    if not LINUX_X86:
        pytest.skip("oneDNN's PyPI wheels are for x86-64 Linux")
    from cnncli import bench

    monkeypatch.setenv("CNN_TUNE", "1")
    tuner.reset()
    try:
        setup = bench._Setup("net2", (8, 8, 1), 10)
        step = setup.train_step(16)
        record = tuner.record("kernels_step", ("net2", (8, 8, 1), 16, 10, (), "fp32"))
        assert set(record["ms"]) == {"with", "without"} and record["choice"] in ("with", "without")
        offered = []
        real = kernels.fast
        monkeypatch.setattr(kernels, "fast", lambda geo: offered.append(real(geo)) or offered[-1])
        x, y, idx = setup.batch(16)
        from cnncli.train.step import zero_metrics

        jax.jit(lambda *a: setup.train_step(16)(*a)).lower(setup.state, zero_metrics(), x, y, idx, np.int32(0))
        assert any(offered) == (record["choice"] == "with")
        del step
    finally:
        tuner.reset()


def test_cnn_kernels_0_turns_them_off_and_bench_says_which_ran(monkeypatch):
    from cnncli.commands.bench import kernels_line

    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("CNN_KERNELS", "0")
    assert not kernels.available() and kernels.why_not() == "$CNN_KERNELS=0" and kernels.version() is None
    assert kernels_line({}) == "kernels: oneDNN not used ($CNN_KERNELS=0); XLA's forms only"
    if not LINUX_X86:
        return
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.delenv("CNN_KERNELS")
    used = {"conv_fwd((1,))": "onednn", "conv_fwd((2,))": "xla", "maxpool_bwd((1,))": "place"}
    line = kernels_line(used)
    assert line.startswith("kernels: oneDNN 3.") and "for 1 of 3 layer ops (conv_fwd 1/2; the rest: XLA's forms)" in line
    assert kernels_line({"conv_fwd((2,))": "xla"}).endswith("for 0 of 1 layer ops; XLA's forms won them all")
