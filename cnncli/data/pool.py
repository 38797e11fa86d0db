"""Decoding many image files at once: chunks of files on a process pool, with progress.

A file is named by a ref `(container, name)`: container None means `name` is a path on disk;
otherwise `container` is a .zip and `name` its member. Bad files are skipped and reported with
a reason, never fatal. Worker processes are forked (cheap, and nothing of the caller's
`__main__` is re-run); once JAX is imported we use threads instead, because forking a process
that runs JAX's threads can deadlock. Pillow releases the GIL while decoding and resizing,
so threads still use both cores on photos.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
from PIL import Image

from .images import BadImage, GRAY_MODES, check_named_format, open_image, to_array

CHUNK = 256  # files per task: big enough to hide inter-process overhead, small for smooth progress
SERIAL_BELOW = 600  # fewer files than this decode in-process: a pool costs ~0.5 s to start


def decode_refs(refs, size, mode, *, label="decoding", fit="squash"):
    """Decode `refs` to uint8 (n_ok, H, W, C) (`fit` as in `decode_image`); returns (x, ok positions,
    [(position, reason)])."""
    h, w = size
    c = 3 if mode == "RGB" else 1
    x = np.empty((len(refs), h, w, c), np.uint8)
    ok = np.zeros(len(refs), bool)
    skipped = []
    for start, (arr, good, bad) in _run(_decode_chunk, refs, (size, mode, fit), label):
        x[start + good] = arr
        ok[start + good] = True
        skipped += [(start + i, reason) for i, reason in bad]
    keep = np.flatnonzero(ok)
    return (x if len(keep) == len(refs) else x[keep]), keep, skipped


def probe_refs(refs, *, label="reading image headers"):
    """For each ref, its (height, width, is_gray) from the header, or None if unreadable."""
    out = [None] * len(refs)
    for start, infos in _run(_probe_chunk, refs, (), label):
        out[start : start + len(infos)] = infos
    return out


def _run(fn, refs, args, label):
    """Yield (start, fn(chunk, *args)) for consecutive chunks, in order, on a pool when worth it."""
    chunks = [(i, refs[i : i + CHUNK]) for i in range(0, len(refs), CHUNK)]
    with ExitStack() as stack:
        progress = _progress(stack, label, len(refs))
        if len(refs) < SERIAL_BELOW or _workers() == 1:
            results = (fn(chunk, *args) for _, chunk in chunks)
        else:
            pool = stack.enter_context(_executor())
            results = pool.map(fn, [c for _, c in chunks], *[[a] * len(chunks) for a in args])
        for (start, chunk), result in zip(chunks, results):
            yield start, result
            progress(len(chunk))


def _decode_chunk(refs, size, mode, fit="squash"):
    """Worker: decode a chunk; returns (stacked arrays, positions decoded, [(position, reason)])."""
    arrays, good, bad = [], [], []
    with _Opener() as opener:
        for i, ref in enumerate(refs):
            try:
                data = opener.read(ref)
                reason = check_named_format(ref[1], data)
                if reason:
                    raise BadImage("", reason)
                arrays.append(to_array(open_image(data), size, mode, "", fit))
                good.append(i)
            except BadImage as e:
                bad.append((i, e.reason))
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                bad.append((i, f"unreadable ({getattr(e, 'strerror', None) or e})"))
    h, w = size
    stacked = np.stack(arrays) if arrays else np.empty((0, h, w, 3 if mode == "RGB" else 1), np.uint8)
    return stacked, np.asarray(good, np.int64), bad


def _probe_chunk(refs):
    """Worker: header-only read of a chunk (size and colour), None where unreadable."""
    out = []
    with _Opener() as opener:
        for ref in refs:
            try:
                with Image.open(opener.stream(ref)) as img:
                    out.append((img.height, img.width, img.mode in GRAY_MODES))
            except Exception:  # noqa: BLE001 - any failure here just means "decide at decode time"
                out.append(None)
    return out


class _Opener:
    """Reads refs, keeping each zip archive open for the whole chunk."""

    def __enter__(self):
        self.zips = {}
        return self

    def __exit__(self, *exc):
        for z in self.zips.values():
            z.close()

    def read(self, ref) -> bytes:
        container, name = ref
        if container is None:
            with open(name, "rb") as f:
                return f.read()
        return self._zip(container).read(name)

    def stream(self, ref):
        container, name = ref
        return open(name, "rb") if container is None else self._zip(container).open(name)

    def _zip(self, path):
        if path not in self.zips:
            self.zips[path] = zipfile.ZipFile(path)
        return self.zips[path]


def _workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _executor():
    """Forked processes where forking is safe, else threads (see the module docstring)."""
    if "fork" in mp.get_all_start_methods() and "jax" not in sys.modules and os.environ.get("CNN_DECODE_THREADS") != "1":
        return ProcessPoolExecutor(_workers(), mp_context=mp.get_context("fork"))
    return ThreadPoolExecutor(_workers())


def _progress(stack: ExitStack, label: str, total: int):
    """A function advancing the progress of `total` files: a bar on a terminal, plain lines elsewhere."""
    from ..console import task_progress

    return stack.enter_context(task_progress(label, total, "files", show_below=SERIAL_BELOW))
