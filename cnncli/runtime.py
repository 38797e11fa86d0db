"""JAX start-up shared by every command that computes: XLA flags, allocator, compilation cache, multi-host setup."""

from __future__ import annotations

import ctypes
import os

_done = False

# XLA:CPU in jaxlib 0.10 hands each convolution to YNNPACK, which runs it on one thread here: net1's
# 3x3 32->64 layer at 94 GFLOP/s forward, 51 for its weight gradient, with 1.0 core busy. Without
# that fusion XLA's own (Eigen) convolutions use both cores: 150-200 GFLOP/s forward and input
# gradient; net1 trains 16% faster and infers 30% faster (`cnn bench`, 2026-11-29). Dots stay with
# YNNPACK, which is faster for them. The flag exists only in the jaxlib versions listed; XLA aborts
# on a flag it does not know, so other versions are left alone.
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
YNN_JAXLIB = ("0.10.",)
_user_xla_flags: str | None = None


def setup_jax() -> None:
    """Idempotent. A persistent compilation cache makes a second `cnn train` of the same model skip
    XLA compilation (seconds per step function on 2 cores); `jax.distributed` joins a multi-host job
    when its coordinator is set in the environment."""
    global _done
    if _done:
        return
    _done = True
    tune_xla()  # a no-op once `cnn`'s entry point ran it; for library users, in time if nothing computed yet
    import jax

    from .host import cache_root

    cache = cache_root() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    from . import distributed

    if distributed.wanted():  # gloo collectives, a peer timeout, one-line errors: see distributed.py
        distributed.initialize()


def tune_xla() -> bool:
    """Turn off YNNPACK's single-threaded convolutions (see YNN_FLAG); True if applied.

    XLA reads XLA_FLAGS when JAX first computes, so call it before that. A user's own setting of
    the same flag wins; `user_xla_flags()` gives what the user had (for peer frameworks).
    """
    global _user_xla_flags
    flags = os.environ.get("XLA_FLAGS", "")
    if _user_xla_flags is None:
        _user_xla_flags = flags
    try:  # 0.4 ms; `importlib.metadata.version("jaxlib")` took 24 ms of every `cnn` start
        from jaxlib.version import __version__ as jaxlib_version
    except ImportError:
        return False
    if not jaxlib_version.startswith(YNN_JAXLIB) or "ynn_fusion_type" in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return True


def user_xla_flags() -> str:
    """XLA_FLAGS as the user set them, before `tune_xla` (TensorFlow aborts on flags it does not know)."""
    return os.environ.get("XLA_FLAGS", "") if _user_xla_flags is None else _user_xla_flags


def tune_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; True if applied.

    Why: XLA:CPU allocates each step's temporaries afresh. glibc serves blocks above 32 MB (and
    blocks of its per-thread arenas) with mmap, so every step page-faults those buffers in again;
    in this VM that costs about 5 us per 4 KB page (~1 GB/s), up to half of a net1 train step in
    kernel time. One arena, no mmap and no trimming make the buffers come back warm. Call it before
    JAX starts its threads; memory stays at the process' peak until it exits.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return all(libc.mallopt(opt, val) == 1 for opt, val in
               ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1)))
