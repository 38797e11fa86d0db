"""oneDNN's convolution and pooling kernels, called from inside jitted functions (XLA's FFI).

XLA:CPU in jaxlib 0.10 has no fast bf16 convolution, and its fp32 ones ran 2-3x slower than
oneDNN's on the same Zen 4 (issue #40); Keras gets its CPU speed from oneDNN. Each function here
is one more candidate of the tuner for its op (`models/layers.py`), timed like the others; none is
chosen by rule. They are offered only on the CPU backend, for dtypes oneDNN has a real (not `ref:`)
implementation of on this CPU, and only when the library could be built and loaded; otherwise one
note says why and the layers keep XLA's forms.

Not differentiable and not exportable by themselves: `layers` wraps them in its custom VJPs, and
export traces under `tuner.plain()`, where no kernel is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys

import numpy as np

from . import build

ENV = "CNN_KERNELS"  # 0: never use them
_state: dict = {}
_off = 0  # > 0: no kernel is offered (`off`)


def _note(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def load() -> ctypes.CDLL | None:
    """The library with its FFI targets registered, or None (said once, with why)."""
    if "lib" in _state:
        return _state["lib"]
    _state["lib"] = None
    if os.environ.get(ENV, "1") == "0":
        _state["why"] = f"${ENV}=0"
        return None
    import jax

    if jax.default_backend() != "cpu":
        _state["why"] = f"the {jax.default_backend()} backend"
        return None
    try:
        path = build.library()
        lib = ctypes.CDLL(str(path))
        for name in ("cnn_conv_fwd", "cnn_conv_fwd_bias", "cnn_conv_bwd_data", "cnn_conv_bwd_weights", "cnn_pool_fwd", "cnn_pool_bwd"):
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
        lib.cnn_impl.argtypes = [ctypes.POINTER(ctypes.c_int64), ctypes.c_char_p, ctypes.c_int64]
        lib.cnn_onednn_version.restype = ctypes.c_char_p
    except (build.BuildError, OSError, AttributeError) as e:
        _state["why"] = str(e)
        _note(f"note: oneDNN kernels not used ({e}); layers use XLA's forms only")
        return None
    _state["lib"] = lib
    _state["version"] = f"{build.key(build.onednn_prefix())} (oneDNN {lib.cnn_onednn_version().decode()})"
    return lib


def available() -> bool:
    return load() is not None


def version() -> str | None:
    """What the tuner keys its choices on: the build key (source, jaxlib, oneDNN) or None."""
    return _state.get("version") if available() else None


def why_not() -> str | None:
    return None if available() else _state.get("why")


# --- which implementation oneDNN would run -------------------------------------------------------

CONV_FWD, CONV_BWD_DATA, CONV_BWD_WEIGHTS, MAX_FWD, MAX_BWD, AVG_FWD, AVG_BWD, CONV_FWD_BIAS, CONV_FWD_BIAS_RELU = range(9)


@functools.lru_cache(maxsize=None)
def impl(geo: tuple) -> str | None:
    """oneDNN's implementation name for a geometry (see `_geo`), or None if it has none."""
    lib = load()
    if lib is None:
        return None
    arr = (ctypes.c_int64 * 18)(*geo)
    buf = ctypes.create_string_buffer(256)
    return buf.value.decode() if lib.cnn_impl(arr, buf, 256) == 0 else None


@contextlib.contextmanager
def off():
    """No kernel is offered while this is open: a step traced in it runs XLA's forms only."""
    global _off
    _off += 1
    try:
        yield
    finally:
        _off -= 1


def without(fn):
    """`fn`, traced with no kernel offered."""
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with off():
            return fn(*args, **kwargs)
    return traced


def fast(geo: tuple) -> bool:
    """A real kernel exists: not oneDNN's reference loops (bf16 on a CPU without bf16 or AVX-512)."""
    if _off:
        return False
    name = impl(geo)
    return name is not None and not name.startswith("ref")


def _geo(kind, dtype, x_shape, window, out_ch, out_hw, strides, pads, groups=1) -> tuple:
    n, h, w, c = x_shape
    (pt, pb), (pl, pr) = pads
    return (kind, int(np.dtype(dtype) != np.float32), n, h, w, c, window[0], window[1], out_ch, out_hw[0],
            out_hw[1], strides[0], strides[1], pt, pb, pl, pr, groups)


def conv_geo(kind, dtype, x_shape, kernel_shape, out_hw, strides, pads) -> tuple:
    """A convolution's geometry; an HWIO kernel with fewer input channels than x has is grouped
    (depthwise: one per group)."""
    return _geo(kind, dtype, x_shape, kernel_shape[:2], kernel_shape[3], out_hw, strides, pads,
                x_shape[3] // kernel_shape[2])


def pool_geo(kind, dtype, x_shape, window, out_hw, strides, pads) -> tuple:
    return _geo(kind, dtype, x_shape, window, x_shape[3], out_hw, strides, pads)


# --- the calls -------------------------------------------------------------------------------------


def _attrs(strides, pads) -> dict:
    (pt, pb), (pl, pr) = pads
    return dict(sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt), pb=np.int64(pb),
                pl=np.int64(pl), pr=np.int64(pr))


def conv_fwd(x, kernel, out_hw, strides, pads):
    """NHWC `x` * HWIO `kernel` -> NHWC, in x's dtype."""
    import jax

    out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, kernel.shape[3]), x.dtype)
    return jax.ffi.ffi_call("cnn_conv_fwd", out)(x, kernel, **_attrs(strides, pads))


def conv_fwd_bias(x, kernel, bias, out_hw, strides, pads, relu: bool):
    """conv_fwd(x, kernel) + bias (fp32), then ReLU if `relu`, in one pass: oneDNN adds them as it
    writes the output (post-ops). In x's dtype."""
    import jax
    import jax.numpy as jnp

    out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, kernel.shape[3]), x.dtype)
    return jax.ffi.ffi_call("cnn_conv_fwd_bias", out)(x, kernel, bias.astype(jnp.float32), relu=np.int64(relu),
                                                      **_attrs(strides, pads))


def conv_bwd_data(dy, kernel, x_shape, strides, pads):
    """d(loss)/d(x) from the output gradient `dy`, in dy's dtype."""
    import jax

    out = jax.ShapeDtypeStruct(tuple(x_shape), dy.dtype)
    return jax.ffi.ffi_call("cnn_conv_bwd_data", out)(dy, kernel, **_attrs(strides, pads))


def conv_bwd_weights(x, dy, kernel_shape, strides, pads):
    """d(loss)/d(kernel), HWIO, fp32."""
    import jax
    import jax.numpy as jnp

    out = jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32)
    return jax.ffi.ffi_call("cnn_conv_bwd_weights", out)(x, dy, **_attrs(strides, pads))


def pool_fwd(x, avg, window, out_hw, strides, pads):
    import jax

    out = jax.ShapeDtypeStruct((x.shape[0], *out_hw, x.shape[3]), x.dtype)
    return jax.ffi.ffi_call("cnn_pool_fwd", out)(x, avg=np.int64(avg), kh=np.int64(window[0]),
                                                 kw=np.int64(window[1]), **_attrs(strides, pads))


def pool_bwd(x, g, avg, window, strides, pads):
    """d(loss)/d(x) of a pooling layer from its output gradient `g` (max: to each window's maximum)."""
    import jax

    out = jax.ShapeDtypeStruct(x.shape, g.dtype)
    return jax.ffi.ffi_call("cnn_pool_bwd", out)(x, g, avg=np.int64(avg), kh=np.int64(window[0]),
                                                 kw=np.int64(window[1]), **_attrs(strides, pads))
