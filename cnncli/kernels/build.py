"""Finding oneDNN and building `onednn.cc` into a shared library, once per source, jaxlib and oneDNN.

The library lands in `$CNN_CACHE_DIR/kernels/<key>/` ($CNN_KERNELS_DIR instead, if set; key: hash of the source, jaxlib's version and
oneDNN's), built by g++ in ~10 s the first time anything asks for a kernel, then only loaded. oneDNN
comes from PyPI's `onednn-cpu-gomp` (+ `-devel` for its headers), which install under the Python
prefix (`<prefix>/lib/libdnnl.so.3`, `<prefix>/include/oneapi/dnnl/`), not under site-packages;
$CNN_ONEDNN_PREFIX names another prefix (a source build, Debian's libdnnl-dev under /usr).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("onednn.cc")
PREFIX_ENV = "CNN_ONEDNN_PREFIX"
DIR_ENV = "CNN_KERNELS_DIR"  # where builds go instead of <cache>/kernels (the tests share one)
LIB = "libdnnl.so.3"


class BuildError(Exception):
    """Why the kernels cannot be had here, in one line."""


def onednn_prefix() -> Path:
    """The prefix holding oneDNN's headers and library."""
    named = os.environ.get(PREFIX_ENV)
    candidates = [Path(named)] if named else [Path(sys.prefix), Path(sys.base_prefix), Path("/usr/local"), Path("/usr")]
    for p in candidates:
        if (p / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and _libdir(p) is not None:
            return p
    where = f"${PREFIX_ENV}={named}" if named else "the Python prefix, /usr/local or /usr"
    raise BuildError(f"oneDNN not found under {where} (pip install onednn-cpu-gomp onednn-devel-cpu-gomp)")


def _libdir(prefix: Path) -> Path | None:
    for d in (prefix / "lib", prefix / "lib64", prefix / "lib" / "x86_64-linux-gnu"):
        if (d / LIB).exists():
            return d
    return None


def onednn_version(prefix: Path) -> str:
    """oneDNN's version from its header (dnnl_version.h), without loading it."""
    text = ""
    for name in ("dnnl_version.h", "dnnl_config.h"):
        f = prefix / "include" / "oneapi" / "dnnl" / name
        if f.is_file():
            text += f.read_text(errors="replace")
    parts = {}
    for line in text.splitlines():
        bits = line.split()
        if len(bits) == 3 and bits[0] == "#define" and bits[1].startswith("DNNL_VERSION_"):
            parts[bits[1][len("DNNL_VERSION_"):]] = bits[2]
    return ".".join(parts.get(k, "?") for k in ("MAJOR", "MINOR", "PATCH"))


def key(prefix: Path) -> str:
    import jaxlib

    text = SOURCE.read_bytes() + f"|{jaxlib.__version__}|{onednn_version(prefix)}|{prefix}".encode()
    return hashlib.sha256(text).hexdigest()[:16]


def library() -> Path:
    """The built library for this source, jaxlib and oneDNN, building it first if needed."""
    from ..host import cache_root

    prefix = onednn_prefix()
    root = Path(os.environ[DIR_ENV]) if os.environ.get(DIR_ENV) else cache_root() / "kernels"
    out = root / key(prefix) / "libcnnkernels.so"
    if not out.is_file():
        build(prefix, out)
    return out


def build(prefix: Path, out: Path) -> None:
    import jax

    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise BuildError("no C++ compiler (g++) to build them")
    libdir = _libdir(prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"building the oneDNN kernels for this machine (once, ~10 s; kept in {out.parent})\n")
    sys.stderr.flush()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # renamed into place: two builds never mix
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
           f"-I{prefix / 'include'}", str(SOURCE), "-o", str(tmp), f"-L{libdir}", f"-l:{LIB}",
           f"-Wl,-rpath,{libdir}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise BuildError(f"g++ failed: {last[:200]}")
        os.replace(tmp, out)
    except subprocess.TimeoutExpired:
        raise BuildError("g++ took over 10 minutes") from None
    finally:
        tmp.unlink(missing_ok=True)
