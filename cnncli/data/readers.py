"""Readers of the official array formats: MNIST IDX, CIFAR-10 binary, CIFAR-10 python pickles, TFDS.

Each returns uint8 images (N, H, W, C) and int32 labels (N,) per split and checks what it reads
(magic numbers, sizes, label ranges) so a damaged file fails with a CnnError naming it.
Image folders, PetImages and zip archives are listed by `folders.py` and decoded lazily instead.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from ..errors import CnnError

# --- MNIST IDX ---------------------------------------------------------------------------------

MNIST_FILES = {  # split -> (images stem, labels stem); the official names, .gz or raw
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_MAGIC = {2051: 3, 2049: 1}  # magic -> number of dimensions (images: N, rows, cols; labels: N)


def find_mnist(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """The four IDX files in `folder` per split, or None when none is there.

    Accepts `.gz` or raw files and the `train-images.idx3-ubyte` spelling some mirrors use.
    """
    found, missing = {}, []
    for split, stems in MNIST_FILES.items():
        paths = [_find_idx(folder, stem) for stem in stems]
        missing += [s for s, p in zip(stems, paths) if p is None]
        found[split] = tuple(paths)
    if len(missing) == 4:
        return None
    if missing:
        raise CnnError(f"MNIST in {folder} is incomplete: missing {', '.join(missing)} (.gz or raw)")
    return found


def _find_idx(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (folder / name).is_file():
            return folder / name
    return None


def read_mnist(files: dict[str, tuple[Path, Path]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the IDX files found by `find_mnist` into {split: (x (N,28,28,1), y (N,))}."""
    out = {}
    for split, (img_path, lbl_path) in files.items():
        x, y = read_idx(img_path), read_idx(lbl_path)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise CnnError(f"MNIST {split}: {img_path.name} and {lbl_path.name} do not match ({x.shape} vs {y.shape})")
        if y.max(initial=0) > 9:
            raise CnnError(f"{lbl_path}: labels must be 0..9, found {int(y.max())}")
        out[split] = (x[..., None], y.astype(np.int32))
    return out


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzip or raw) of unsigned bytes, checking its magic number and size."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise CnnError(f"{path}: cannot read ({e})") from None
    magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if magic not in _IDX_MAGIC:
        raise CnnError(f"{path}: not an MNIST IDX file of bytes (magic {magic}, expected 2049 or 2051)")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) != header + int(np.prod(dims)):
        raise CnnError(f"{path}: size {len(data)} bytes does not match its header {dims} (truncated?)")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


# --- CIFAR-10 binary ---------------------------------------------------------------------------

CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then the R, G and B planes of 32x32


def read_cifar_bin(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 binary batches from a `cifar-10-batches-bin` folder or the official .tar.gz."""
    files = _batch_files(path, ".bin")
    out = {}
    for split, names in CIFAR_BATCHES.items():
        xs, ys = [], []
        for name in names:
            data = files[name + ".bin"]
            if len(data) == 0 or len(data) % _CIFAR_RECORD:
                raise CnnError(f"{path}: {name}.bin has {len(data)} bytes, not a multiple of {_CIFAR_RECORD}")
            rec = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
            ys.append(rec[:, 0].astype(np.int32))
            xs.append(_planes_to_hwc(rec[:, 1:]))
        out[split] = _checked_cifar(path, np.concatenate(xs), np.concatenate(ys))
    return out


# --- CIFAR-10 python pickles -------------------------------------------------------------------


def read_cifar_py(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 pickled batches from a `cifar-10-batches-py` folder or the official .tar.gz.

    The pickles are read by `SafeUnpickler`, which builds only plain containers and numpy
    arrays: a pickle naming any other class or function is refused, so a doctored file
    cannot run code.
    """
    files = _batch_files(path, "")
    out = {}
    for split, names in CIFAR_BATCHES.items():
        xs, ys = [], []
        for name in names:
            batch = safe_loads(files[name], f"{path}: {name}")
            data, labels = batch.get("data"), batch.get("labels")
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise CnnError(f"{path}: {name} has no uint8 'data' array of shape (N, 3072)")
            if not isinstance(labels, list) or len(labels) != len(data):
                raise CnnError(f"{path}: {name} has no 'labels' list of {len(data)} ints")
            xs.append(_planes_to_hwc(data))
            ys.append(np.asarray(labels, np.int32))
        out[split] = _checked_cifar(path, np.concatenate(xs), np.concatenate(ys))
    return out


def safe_loads(data: bytes, label: str) -> dict:
    """Unpickle a CIFAR batch with `SafeUnpickler`; dict keys come back as str."""
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise CnnError(f"{label}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any malformed pickle is a bad file, not a crash
        raise CnnError(f"{label}: not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CnnError(f"{label}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as fn
    return fn


def _latin1_encode(text, encoding="latin1"):
    """What protocol-2 pickles written by Python 3 call to rebuild bytes; only latin-1 is allowed."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode with anything but (str, 'latin1')")
    return text.encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that admits only the globals numpy arrays and plain containers need."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
        **{(mod, t.__name__): (lambda t=t: t) for mod in ("builtins", "__builtin__") for t in (dict, list, bytes, str, int)},
    }

    def find_class(self, module, name):
        factory = self.ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain data are allowed")
        return factory()


# --- shared CIFAR helpers ----------------------------------------------------------------------


def _batch_files(path: Path, suffix: str) -> dict[str, bytes]:
    """{batch file name: bytes} of the six CIFAR batches, from a folder or a .tar.gz."""
    wanted = {n + suffix for names in CIFAR_BATCHES.values() for n in names}
    found = {}
    try:
        if path.is_dir():
            found = {n: (path / n).read_bytes() for n in wanted if (path / n).is_file()}
        else:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    name = Path(member.name).name
                    if member.isfile() and name in wanted:
                        found[name] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise CnnError(f"{path}: cannot read ({e})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise CnnError(f"{path}: missing CIFAR-10 batches {', '.join(missing)}")
    return found


def _planes_to_hwc(rows: np.ndarray) -> np.ndarray:
    """(N, 3072) rows of R, G, B planes -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _checked_cifar(path, x, y):
    if y.max(initial=0) > 9 or y.min(initial=0) < 0:
        raise CnnError(f"{path}: CIFAR-10 labels must be 0..9, found {int(y.min())}..{int(y.max())}")
    return x, y


# --- TFDS prepared copies ----------------------------------------------------------------------


def find_tfds(name: str, tfds_dir: Path) -> Path | None:
    """The newest prepared version folder of `name` under a TFDS data dir, or None."""
    versions = [p.parent for p in (tfds_dir / name).glob("*/dataset_info.json")]
    return max(versions, key=lambda v: [int(n) if n.isdigit() else -1 for n in v.name.split(".")], default=None)


def open_tfds(name: str, tfds_dir: Path) -> dict | None:
    """`tfds.data_source` splits of a prepared array_record copy, or None if it cannot be read.

    Images come back as their encoded bytes (SkipDecoding) so that `decode_image` decodes
    and resizes them like every other photo. Needs no TensorFlow. Any failure (tfrecord
    format, missing files, version skew) means "no usable TFDS copy".
    """
    try:
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # its tqdm bar is not ours: progress is console.task_progress's
        skip = {"image": tfds.decode.SkipDecoding()}
        return dict(tfds.data_source(name, data_dir=str(tfds_dir), download=False, decoders=skip))
    except Exception:  # noqa: BLE001 - documented: TFDS errors are caught, this source is skipped
        return None
