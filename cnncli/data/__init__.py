"""Data sets: registry, readers of the official formats, the array cache, splits, downloads.

    from cnncli.data import load_dataset
    ds = load_dataset("cifar10", val_split=0.1, limit=2000, seed=0)
    ds.train.x  # uint8 (N, 32, 32, 3), memory-mapped from the cache when whole

Modules: `registry` (names, classes, shapes, sources), `sources` (where files are looked for;
the expected layout is in its docstring), `readers` (IDX, CIFAR binary/pickle, TFDS),
`folders` (image folders, zips), `images` (`decode_image`), `pool` (parallel decoding),
`cache`, `splits`, `loader` (`load_dataset`), `download` (`cnn download`).
"""

from .registry import DATASETS, DatasetSpec, default_data_dir, get_spec

_LAZY = {"decode_image": "images", "Dataset": "loader", "Split": "loader", "load_dataset": "loader"}

__all__ = ["DATASETS", "Dataset", "DatasetSpec", "Split", "decode_image", "default_data_dir", "get_spec", "load_dataset"]


def __getattr__(name):
    # PEP 562: the registry is all `cnn --help` needs (to list the names); the readers pull in NumPy
    # and Pillow (~0.2 s), so they load on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
