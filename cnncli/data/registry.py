"""The data set registry: the one place that says what each named data set is.

A name maps to a `DatasetSpec`: class names in label order, native input shape, official
splits, where the official files come from and how they must be laid out under a data dir.
Any folder path is a data set too (see `folders.py`); `get_spec` describes it on the fly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CnnError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]  # label order; empty for a folder until listed
    shape: tuple  # native (H, W, C); H and W are None for photos of varied size
    splits: tuple[str, ...]  # official splits; a missing "test" is carved (20%, fixed seed)
    source: str  # where the official files come from
    layout: str = ""  # what `<data_dir>/<name>/` may hold (for messages and `cnn datasets`)
    default_size: int | None = None  # image size when none is asked for and the shape is varied
    urls: tuple[str, ...] = field(default=())  # official files `cnn download` fetches
    tfds_name: str | None = None  # name of a TFDS-prepared copy to fall back on
    folder: Path | None = None  # set for a data set given as a folder path

    @property
    def num_classes(self) -> int:
        return len(self.classes)


_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            classes=tuple(str(d) for d in range(10)),
            shape=(28, 28, 1),
            splits=("train", "test"),
            source="MNIST: 4 official IDX files, 60,000 + 10,000 digits",
            layout="mnist/train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (.gz or raw)",
            urls=tuple(
                _MNIST_URL + f
                for f in (
                    "train-images-idx3-ubyte.gz",
                    "train-labels-idx1-ubyte.gz",
                    "t10k-images-idx3-ubyte.gz",
                    "t10k-labels-idx1-ubyte.gz",
                )
            ),
            tfds_name="mnist",
        ),
        DatasetSpec(
            name="cifar10",
            classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
            shape=(32, 32, 3),
            splits=("train", "test"),
            source="CIFAR-10: official binary or pickles, 50,000 + 10,000",
            layout="cifar10/cifar-10-batches-bin/ or cifar-10-binary.tar.gz, cifar10/cifar-10-batches-py/ "
            "or cifar-10-python.tar.gz, or image folders cifar10/{train,test}/<class>/*.jpg",
            urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
            tfds_name="cifar10",
        ),
        DatasetSpec(
            name="cats_vs_dogs",
            classes=("cat", "dog"),
            shape=(None, None, 3),
            splits=("train",),
            source="Microsoft Dogs vs. Cats zip (PetImages), ~25,000 photos",
            layout="cats_vs_dogs/{train,test}/{cat,dog}/*.jpg, cats_vs_dogs/PetImages/{Cat,Dog}/*.jpg, "
            "or cats_vs_dogs/kagglecatsanddogs*.zip",
            default_size=128,
            urls=(
                "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/"
                "kagglecatsanddogs_5340.zip",
            ),
            tfds_name="cats_vs_dogs",
        ),
        DatasetSpec(
            name="digits",
            classes=tuple(str(d) for d in range(10)),
            shape=(8, 8, 1),
            splits=("train",),
            source="scikit-learn load_digits: 1,797 digits, offline",
            layout="nothing: it ships with scikit-learn",
        ),
    )
}


def get_spec(name_or_path: str | os.PathLike) -> DatasetSpec:
    """The spec of a registry name, or of an image folder given by path."""
    key = os.fspath(name_or_path)
    if key in DATASETS:
        return DATASETS[key]
    path = Path(key).expanduser()
    if path.is_dir():
        path = path.resolve()
        return DatasetSpec(
            name=path.name,
            classes=(),
            shape=(None, None, None),
            splits=("train", "val", "test"),
            source=f"image folder {path}",
            layout="<class>/*.jpg or {train,val,test}/<class>/*.jpg",
            default_size=128,
            folder=path,
        )
    if path.exists():
        raise CnnError(f"{key} is a file, not a data set folder (expected <class>/*.jpg inside)")
    raise CnnError(f"unknown data set {key!r}: use one of {', '.join(DATASETS)} or an image folder path")


def default_data_dir() -> Path:
    """Where local data set files live: $CNN_DATA_DIR, else ~/.cache/cnn/data (host.py)."""
    from ..host import data_root

    return data_root()


def tfds_data_dir() -> Path:
    """TFDS's own data dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    env = os.environ.get("TFDS_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / "tensorflow_datasets"
