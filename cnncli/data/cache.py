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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fsutil import atomic_path, write_json

CACHE_VERSION = 1  # bump when the meaning of cached arrays changes


def cache_root() -> Path:
    env = os.environ.get("CNN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cnn"


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
    for split, arrays in splits.items():
        for part, arr in zip(("x", "y", "ids"), arrays):
            with atomic_path(folder / f"{split}_{part}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(arr))
    meta = {**meta, "key": key, "cache_version": CACHE_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(folder / "meta.json", meta)
    entry = Entry(folder, meta)
    _remove_stale(entry)
    return entry


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


def _remove_stale(entry: Entry) -> None:
    """Delete older entries built from the same source location with the same preprocessing."""
    same = ("name", "source", "prep")
    for other in list_entries():
        if other.dir != entry.dir and all(other.meta.get(k) == entry.meta.get(k) for k in same):
            shutil.rmtree(other.dir, ignore_errors=True)
