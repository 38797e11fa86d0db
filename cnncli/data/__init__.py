"""Data sets: registry, readers of the official formats, the array cache, splits, downloads.

    from cnncli.data import load_dataset
    ds = load_dataset("cifar10", val_split=0.1, limit=2000, seed=0)
    ds.train.x  # uint8 (N, 32, 32, 3), memory-mapped from the cache when whole

Modules: `registry` (names, classes, shapes, sources), `sources` (where files are looked for;
the expected layout is in its docstring), `readers` (IDX, CIFAR binary/pickle, TFDS),
`folders` (image folders, zips), `images` (`decode_image`), `pool` (parallel decoding),
`cache`, `splits`, `loader` (`load_dataset`), `download` (`cnn download`).
"""

from .images import decode_image
from .loader import Dataset, Split, load_dataset
from .registry import DATASETS, DatasetSpec, default_data_dir, get_spec

__all__ = ["DATASETS", "Dataset", "DatasetSpec", "Split", "decode_image", "default_data_dir", "get_spec", "load_dataset"]
