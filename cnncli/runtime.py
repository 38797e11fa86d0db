"""JAX start-up shared by every command that computes: compilation cache and multi-host setup."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_done = False


def setup_jax() -> None:
    """Idempotent. A persistent compilation cache makes a second `cnn train` of the same model skip
    XLA compilation (seconds per step function on 2 cores); `jax.distributed` joins a multi-host job
    when its coordinator is set in the environment."""
    global _done
    if _done:
        return
    _done = True
    import jax

    cache = Path(os.environ.get("CNN_CACHE_DIR", Path.home() / ".cache" / "cnn")) / "xla"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
        jax.distributed.initialize()


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
