"""`cnn datasets`: the known data sets, where their files are, and what the cache holds."""

from __future__ import annotations

from pathlib import Path

from . import cache, readers
from .registry import DATASETS, DatasetSpec, default_data_dir, tfds_data_dir


def catalog(data_dir=None) -> dict:
    """Registry entries with their local files (a cheap look, no listing) and the cache entries."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return {
        "data_dir": str(root),
        "cache_dir": str(cache.arrays_root()),
        "datasets": [_describe(spec, root) for spec in DATASETS.values()],
        "cache": [_cached(e) for e in cache.list_entries()],
    }


def _describe(spec: DatasetSpec, root: Path) -> dict:
    h, w, c = spec.shape
    shape = f"{h}x{w}x{c}" if h else f"varied x{c} (default {spec.default_size}x{spec.default_size})"
    return {
        "name": spec.name,
        "classes": list(spec.classes),
        "shape": shape,
        "splits": list(spec.splits),
        "source": spec.source,
        "layout": spec.layout,
        "local": _local_files(spec, root),
    }


def _local_files(spec: DatasetSpec, root: Path) -> str | None:
    if not spec.urls:
        return "scikit-learn"
    if (root / spec.name).is_dir() and any((root / spec.name).iterdir()):
        return str(root / spec.name)
    version_dir = readers.find_tfds(spec.tfds_name, tfds_data_dir()) if spec.tfds_name else None
    return f"TFDS {version_dir}" if version_dir else None


def _cached(entry: cache.Entry) -> dict:
    meta = entry.meta
    return {
        "name": meta["name"],
        "size": "x".join(str(s) for s in meta["size"]),
        "mode": meta["mode"],
        "rows": {s: v["rows"] for s, v in meta["splits"].items()},
        "skipped": len(meta["skipped"]),
        "megabytes": f"{entry.size_bytes() / 1e6:.1f}",
        "source": meta["source"],
        "path": str(entry.dir),
        "created": meta.get("created"),
    }
