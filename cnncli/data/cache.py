"""The array cache: decoded uint8 arrays as .npy files, memory-mapped on every later load.

Layout, under $CNN_CACHE_DIR (else ~/.cache/cnn):

    arrays/<name>-<key[:16]>/
        meta.json                       written last: an entry without it is incomplete, ignored
        <split>_x.npy  <split>_y.npy    uint8 (N, H, W, C) and int32 (N,), one pair per split
        <split>_ids.npy                 index of each row among the source's items of that split
                                        (the items missing from it were skipped; see meta.json)
        samples.png                     written by `cnn download`

The key hashes the source's identity (paths, sizes, mtimes of its files) and the
preprocessing (image size, mode), so a changed source or size gets a new entry and the stale
entry of the same source is removed. Every file is written atomically (`fsutil.atomic_path`).

meta.json lists each array file's size, mtime and CRC-32. Opening an entry compares sizes and
mtimes (a stat per file); only a file whose mtime changed since it was written is read whole to
compare its CRC (~0.1 s for CIFAR-10's 184 MB, see `damage`). A damaged entry is rebuilt by the
loader, with a note.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..host import cache_root  # the data sets' arrays live under it
from .. import locks
from ..faultpoints import point
from ..fsutil import atomic_path, write_json

CACHE_VERSION = 1  # bump when the meaning of cached arrays changes




def arrays_root() -> Path:
    return cache_root() / "arrays"


def make_key(identity: str, prep: dict) -> str:
    """The cache key (also the data set fingerprint) of a source identity and preprocessing."""
    text = json.dumps({"version": CACHE_VERSION, "source": identity, "prep": prep}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "data"


@dataclass
class Entry:
    dir: Path
    meta: dict

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, ids) of a split, memory-mapped read-only: loading costs no copy."""
        return tuple(np.load(self.dir / f"{split}_{part}.npy", mmap_mode="r") for part in ("x", "y", "ids"))

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.dir.iterdir() if f.is_file())


def entry_dir(name: str, key: str) -> Path:
    return arrays_root() / f"{slug(name)}-{key[:16]}"


def open_entry(name: str, key: str) -> Entry | None:
    """The complete entry for this key, or None."""
    return _read_entry(entry_dir(name, key), key)


def write_entry(name: str, key: str, meta: dict, splits: dict) -> Entry:
    """Save {split: (x, y, ids)} and then meta.json; remove stale entries of the same source."""
    folder = entry_dir(name, key)
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():  # left by a writer killed mid-file (the
        # caller holds `building`, so no other writer is at work here)
        tmp.unlink(missing_ok=True)
    files = {}
    for split, arrays in splits.items():
        for part, arr in zip(("x", "y", "ids"), arrays):
            path = folder / f"{split}_{part}.npy"
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(arr))
            files[path.name] = _stamp(path, crc32(path))
            point("cache-array-written")
    meta = {**meta, "key": key, "cache_version": CACHE_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "files": files}
    write_json(folder / "meta.json", meta)
    entry = Entry(folder, meta)
    _remove_stale(entry)
    return entry


@contextlib.contextmanager
def building(name: str, key: str):
    """Held while one process builds the entry of `key` (its lock file is in <cache>/locks/)."""
    folder = entry_dir(name, key)
    where = cache_root() / "locks"
    where.mkdir(parents=True, exist_ok=True)
    with locks.held(where, f"building the cache entry {folder.name}", wait=True, name=f"{folder.name}.lock"):
        yield


def list_entries() -> list[Entry]:
    """Every complete entry, newest first."""
    root = arrays_root()
    if not root.is_dir():
        return []
    entries = [e for d in root.iterdir() if d.is_dir() for e in (_read_entry(d),) if e is not None]
    return sorted(entries, key=lambda e: e.meta.get("created", ""), reverse=True)


def find_latest(name: str, prep: dict) -> Entry | None:
    """The newest entry of a data set with this preprocessing, whatever its source (files gone)."""
    for e in list_entries():
        if e.meta.get("name") == name and e.meta.get("prep") == prep:
            return e
    return None


def _read_entry(folder: Path, key: str | None = None) -> Entry | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("cache_version") != CACHE_VERSION or (key is not None and meta.get("key") != key):
        return None
    needed = [folder / f"{s}_{p}.npy" for s in meta.get("splits", {}) for p in ("x", "y", "ids")]
    if not all(f.is_file() for f in needed):
        return None
    return Entry(folder, meta)


def crc32(path: Path, chunk: int = 8 << 20) -> int:
    """CRC-32 of a file, read in chunks (zlib's runs at several GB/s here)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def _stamp(path: Path, crc: int) -> dict:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "crc32": crc}


def damage(entry: Entry) -> str | None:
    """Why `entry`'s arrays cannot be trusted (a file truncated, grown or rewritten), or None.

    A file with the size and mtime it was written with is taken as written; one whose mtime moved
    (copied, touched, rewritten) is checked against its CRC, and on a match its new mtime is recorded
    so that the next load is a stat again. Entries written before checksums have nothing to compare.
    """
    files = entry.meta.get("files") or {}
    moved = {}
    for name, want in files.items():
        path = entry.dir / name
        try:
            st = path.stat()
        except OSError as e:
            return f"{name}: {e.strerror}"
        if st.st_size != want["bytes"]:
            return f"{name} has {st.st_size:,} bytes, {want['bytes']:,} were written"
        if st.st_mtime_ns != want["mtime_ns"]:
            if crc32(path) != want["crc32"]:
                return f"{name} does not match its checksum"
            moved[name] = {**want, "mtime_ns": st.st_mtime_ns}
    if moved:
        entry.meta = {**entry.meta, "files": {**files, **moved}}
        try:
            write_json(entry.dir / "meta.json", entry.meta)
        except OSError:  # a read-only cache: the check simply runs again next time
            pass
    return None


def remove(entry: Entry) -> None:
    shutil.rmtree(entry.dir, ignore_errors=True)


def _remove_stale(entry: Entry) -> None:
    """Delete older entries built from the same source location with the same preprocessing."""
    same = ("name", "source", "prep")
    for other in list_entries():
        if other.dir != entry.dir and all(other.meta.get(k) == entry.meta.get(k) for k in same):
            shutil.rmtree(other.dir, ignore_errors=True)
