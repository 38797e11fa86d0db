"""What this machine is, in one place: the CPU's model and instruction sets, the usable cores,
whether it has bf16 arithmetic, and the project's folders on it (cache, data).

The tuner keys its measurements on these facts, `cnn bench` and the benchmarks print them beside
every figure, and `--precision auto` reads the bf16 flags. Standard library only (`cnn --help`
imports nothing heavy).
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

CACHE_ENV, DATA_ENV = "CNN_CACHE_DIR", "CNN_DATA_DIR"
# The flags that change which formulation of a layer is fastest (the tuner's key).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd",
             "sve")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 products in hardware, fastest first


def cpu_fields(cpuinfo: str | None = None) -> tuple[str, dict]:
    """(model name, {field: value}) of the first CPU in /proc/cpuinfo (or `cpuinfo`); ('', {}) where
    there is none (not Linux)."""
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # one block per logical CPU; the first one's values
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", ""), fields


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> str:
    """/proc/cpuinfo, read once per process (the tuner asks for the host's key at every layer)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return ""


def flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`)."""
    _, fields = cpu_fields(cpuinfo)
    return set((fields.get("flags") or fields.get("Features") or "").split())


def cores() -> int:
    """Cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu(cpuinfo: str | None = None) -> dict:
    """{model, cores, isa}: what every figure is recorded with; isa is the widest x86 vector extension."""
    model, _ = cpu_fields(cpuinfo)
    have = flags(cpuinfo)
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in have),
               platform.machine() or "unknown")
    return dict(model=model or platform.processor() or "unknown", cores=cores(), isa=isa)


def bf16_arithmetic(cpuinfo: str | None = None) -> str | None:
    """The flag that gives this CPU bf16 products ('amx_bf16' or 'avx512_bf16'), or None."""
    have = flags(cpuinfo)
    return next((f for f in BF16_FLAGS if f in have), None)


def cache_root() -> Path:
    """$CNN_CACHE_DIR, else ~/.cache/cnn: arrays, the tuner's table, compiled programs, kernels."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnn"


def data_root() -> Path:
    """Where local data set files live: $CNN_DATA_DIR, else ~/.cache/cnn/data (where `cnn download` puts them)."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnn" / "data"


def data_dir_named() -> str | None:
    """The folder $CNN_DATA_DIR names, as typed, or None: commands that say where data came from."""
    return os.environ.get(DATA_ENV) or None
