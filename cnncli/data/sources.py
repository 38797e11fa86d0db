"""Finding a data set's files on this machine and reading them lazily.

Search order for a registry name (the first that exists wins; the cache in front of all of
them is keyed by what is found here, see `loader.py`):

1. `<data_dir>/<name>/`, where `<data_dir>` is the `data_dir` argument / `--data-dir`, else
   $CNN_DATA_DIR, else ~/.cache/cnn/data (where `cnn download` puts files). Expected layout:

       <data_dir>/mnist/train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                        t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz   (.gz or raw)
       <data_dir>/cifar10/cifar-10-batches-bin/  or cifar-10-binary.tar.gz     (official binary)
       <data_dir>/cifar10/cifar-10-batches-py/   or cifar-10-python.tar.gz     (official pickles)
       <data_dir>/cifar10/{train,test}/<class>/*.jpg                            (image folders)
       <data_dir>/cats_vs_dogs/{train,test}/{cat,dog}/*.jpg
       <data_dir>/cats_vs_dogs/PetImages/{Cat,Dog}/*.jpg    (the Microsoft archive, unpacked)
       <data_dir>/cats_vs_dogs/kagglecatsanddogs*.zip       (the Microsoft archive itself)

   Within one folder the official formats are preferred in the order listed.
2. A TFDS-prepared array_record copy under $TFDS_DATA_DIR or ~/tensorflow_datasets,
   read with `tfds.data_source(..., download=False)` (no TensorFlow needed).

`digits` always comes from scikit-learn; a folder path is read as an image folder.
A data set without an official test split gets one carved: 20% stratified, fixed seed.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CnnError
from . import folders, readers
from .images import BadImage, check_named_format, decode_image, open_image, resize_array, to_array
from .pool import decode_refs, probe_refs
from .registry import DatasetSpec, default_data_dir, tfds_data_dir
from .splits import TEST_FRACTION, TEST_SEED, stratified_split

# --- items: the pixels of one split, fetched by index ---------------------------------------------


@dataclass
class ArrayItems:
    """Images already decoded by an official-format reader (or scikit-learn)."""

    x: np.ndarray

    def take(self, idx):
        return ArrayItems(self.x[idx])

    def fetch(self, idx, size, mode, fit="squash"):
        x = self.x[idx]
        if x.shape[1:3] != tuple(size):
            resized = [resize_array(img, size, fit) for img in x]
            x = np.stack(resized) if resized else np.empty((0, *size, x.shape[-1]), np.uint8)
        return x, np.arange(len(idx)), []

    def name(self, i) -> str:
        return f"#{i}"

    def native(self, i, mode):
        """Item `i` at its own size (checks that re-frame the image before the resize start here)."""
        return self.x[i]


@dataclass
class FileItems:
    """Encoded image files (on disk or in a zip), decoded by the process pool on demand."""

    refs: list
    root: Path

    def take(self, idx):
        return FileItems([self.refs[i] for i in idx], self.root)

    def fetch(self, idx, size, mode, fit="squash"):
        return decode_refs([self.refs[i] for i in idx], size, mode, label=f"decoding {self.root.name}", fit=fit)

    def native(self, i, mode):
        """Item `i` decoded at its own size, checked as `decode_refs` checks it; BadImage if it is not one."""
        container, name = self.refs[i]
        data = Path(name).read_bytes() if container is None else _zip(container).read(name)
        reason = check_named_format(name, data)
        if reason:
            raise BadImage(name, reason)
        return to_array(open_image(data, name), None, mode, name)

    def name(self, i) -> str:
        container, name = self.refs[i]
        if container is not None:
            return name
        try:
            return str(Path(name).relative_to(self.root))
        except ValueError:
            return name


@dataclass
class TfdsItems:
    """Records of a TFDS data source holding encoded images, decoded like files."""

    ds: object
    index: np.ndarray

    def take(self, idx):
        return TfdsItems(self.ds, self.index[idx])

    def fetch(self, idx, size, mode, fit="squash"):
        arrays, ok, bad = [], [], []
        for pos, i in enumerate(self.index[idx]):
            try:
                arrays.append(decode_image(self.ds[int(i)]["image"], size, mode, fit))
                ok.append(pos)
            except BadImage as e:
                bad.append((pos, e.reason))
        c = 3 if mode == "RGB" else 1
        x = np.stack(arrays) if arrays else np.empty((0, *size, c), np.uint8)
        return x, np.asarray(ok, np.int64), bad

    def name(self, i) -> str:
        return f"record {int(self.index[i])}"

    def native(self, i, mode):
        return decode_image(self.ds[int(self.index[i])]["image"], None, mode)


@functools.lru_cache(maxsize=2)
def _zip(path: str) -> zipfile.ZipFile:
    """An archive kept open while its members are read one by one (listing 25,000 names costs ~0.1 s)."""
    return zipfile.ZipFile(path)


@dataclass
class Part:
    """One split before decoding: the label of every item and how to get its pixels."""

    y: np.ndarray
    items: ArrayItems | FileItems | TfdsItems

    def take(self, idx):
        return Part(self.y[idx], self.items.take(idx))


# --- a located source ---------------------------------------------------------------------------


@dataclass
class Source:
    spec: DatasetSpec
    kind: str  # mnist-idx, cifar-bin, cifar-py, image-folder, zip, sklearn, tfds
    path: Path
    classes: list[str]
    files: list  # paths (str or Path) whose sizes and mtimes identify this copy
    load: Callable[[], dict[str, Part]] = field(repr=False)

    @cached_property
    def _read(self) -> dict[str, Part]:
        return dict(self.load())

    @cached_property
    def parts(self) -> dict[str, Part]:
        """The splits, read lazily; a missing test split is carved here (20%, fixed seed)."""
        parts = dict(self._read)
        if "test" not in parts:
            pool = "all" if "all" in parts else "train"
            kept, taken = stratified_split(parts[pool].y, TEST_FRACTION, TEST_SEED)
            parts["test"] = parts[pool].take(taken)
            parts["train"] = parts.pop(pool).take(kept)
        return {s: parts[s] for s in ("train", "val", "test") if s in parts}

    @property
    def test_note(self) -> str:
        if "test" in self._read:
            return "official"
        return f"carved: {int(TEST_FRACTION * 100)}% stratified, seed {TEST_SEED} (the source has no test split)"

    def identity(self) -> str:
        """Hash of the source's kind, files, sizes and modification times: a change means a rebuild."""
        h = hashlib.sha256(f"{self.kind}\n{self.path}\n".encode())
        for f in self.files:
            st = os.stat(f)
            h.update(f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def target(self, image_size: int | None) -> tuple[tuple[int, int], str]:
        """((H, W), mode) the images are decoded to."""
        h, w, c = self.spec.shape
        if h is not None:  # registry data set of fixed shape: native size unless asked otherwise
            size = (image_size, image_size) if image_size else (h, w)
            return size, "L" if c == 1 else "RGB"
        if self.spec.folder is None:  # registry photos (cats_vs_dogs): RGB, default size
            side = image_size or self.spec.default_size
            return (side, side), "RGB"
        return self._probe_folder(image_size)

    def _probe_folder(self, image_size):
        """For a folder: L only if every image is grayscale; native size if all share one, else 128."""
        refs = [r for p in self.parts.values() for r in p.items.refs]
        infos = [i for i in probe_refs(refs) if i is not None]
        mode = "L" if infos and all(gray for _, _, gray in infos) else "RGB"
        if image_size:
            return (image_size, image_size), mode
        sizes = {(h, w) for h, w, _ in infos}
        side = self.spec.default_size
        return (sizes.pop() if len(sizes) == 1 else (side, side)), mode


# --- locating -----------------------------------------------------------------------------------


def locate(spec: DatasetSpec, data_dir=None) -> Source | None:
    """The first copy of `spec` found on this machine (order in the module docstring), or None."""
    if spec.folder is not None:
        return _folder_source(spec, spec.folder, classes=None)
    if spec.name == "digits":
        return _digits_source(spec)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    folder = root / spec.name
    if folder.is_dir():
        src = _LOCAL[spec.name](spec, folder)
        if src is not None:
            return src
    return _tfds_source(spec) if spec.tfds_name else None


def searched_places(spec: DatasetSpec, data_dir=None) -> str:
    """Where `locate` looked, for the not-found message."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    return f"{root / spec.name} (expected layout: <data_dir>/{spec.layout}) and TFDS data dir {tfds_data_dir()}"


def _mnist_local(spec, folder):
    files = readers.find_mnist(folder)
    if files is None:
        return None

    def load():
        return {s: Part(y, ArrayItems(x)) for s, (x, y) in readers.read_mnist(files).items()}

    return Source(spec, "mnist-idx", folder, list(spec.classes), [p for pair in files.values() for p in pair], load)


def _cifar_local(spec, folder):
    for kind, reader, names in (
        ("cifar-bin", readers.read_cifar_bin, ("cifar-10-batches-bin", "cifar-10-binary.tar.gz")),
        ("cifar-py", readers.read_cifar_py, ("cifar-10-batches-py", "cifar-10-python.tar.gz")),
    ):
        for name in names:
            path = folder / name
            if path.exists():
                files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
                load = lambda path=path, reader=reader: {  # noqa: E731
                    s: Part(y, ArrayItems(x)) for s, (x, y) in reader(path).items()
                }
                return Source(spec, kind, path, list(spec.classes), files, load)
    if folders.has_split_dirs(folder):
        return _folder_source(spec, folder, classes=list(spec.classes))
    return None


def _cats_local(spec, folder):
    if folders.has_split_dirs(folder):
        return _folder_source(spec, folder, classes=list(spec.classes))
    if (folder / "PetImages").is_dir():
        return _folder_source(spec, folder / "PetImages", classes=list(spec.classes))
    zips = sorted(folder.glob("kagglecatsanddogs*.zip"))
    if zips:
        listing = folders.list_zip(zips[-1], list(spec.classes), r"^(?:.*/)?PetImages/(Cat|Dog)/[^/]+$")
        return _listing_source(spec, "zip", zips[-1], listing, [zips[-1]])
    return None


_LOCAL = {"mnist": _mnist_local, "cifar10": _cifar_local, "cats_vs_dogs": _cats_local}


def _folder_source(spec, folder: Path, classes):
    listing = folders.list_folder(folder, classes)
    files = [name for refs, _ in listing.splits.values() for _, name in refs]
    return _listing_source(spec, "image-folder", folder, listing, files)


def _listing_source(spec, kind, path, listing, files):
    def load():
        return {s: Part(y, FileItems(refs, Path(path))) for s, (refs, y) in listing.splits.items()}

    return Source(spec, kind, Path(path), listing.classes, files, load)


def _digits_source(spec):
    import sklearn
    from sklearn.datasets import load_digits

    def load():
        d = load_digits()
        # Values are 0..16: scale to the 0..255 of every other data set.
        x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return {"all": Part(d.target.astype(np.int32), ArrayItems(x))}

    data_file = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    return Source(spec, "sklearn", data_file, list(spec.classes), [data_file] if data_file.exists() else [], load)


def _tfds_source(spec):
    version_dir = readers.find_tfds(spec.tfds_name, tfds_data_dir())
    if version_dir is None:
        return None
    sources = readers.open_tfds(spec.tfds_name, tfds_data_dir())
    if not sources or "train" not in sources:
        return None

    def load():
        parts = {}
        for split, ds in sources.items():
            n = len(ds)
            y = np.asarray([int(ds[i]["label"]) for i in range(n)], np.int32)
            parts[split] = Part(y, TfdsItems(ds, np.arange(n)))
        return parts

    files = sorted(p for p in version_dir.rglob("*") if p.is_file())
    return Source(spec, "tfds", version_dir, list(spec.classes), files, load)


def raise_not_found(spec: DatasetSpec, data_dir=None):
    raise CnnError(
        f"data set {spec.name!r} not found locally; run `cnn download {spec.name}` or pass --data-dir DIR "
        f"(looked in {searched_places(spec, data_dir)})"
    )
