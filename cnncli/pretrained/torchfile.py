"""Reading PyTorch's legacy `.pth` serialization without torch and without running code from it.

The legacy format (torch.save before the zip container, still what several weight wheels ship) is:
three small pickles (a magic number, the protocol version, sizes of the saving machine's C types),
the pickled object with each tensor's storage as a persistent id, a pickled list of the storage keys,
then each storage's bytes in that order, each behind its element count (int64, little-endian).

A pickle can name any importable callable and have it called: `pickle.load` of an untrusted file
runs code. The unpickler below resolves exactly the four kinds of global this format holds for a
state dict (OrderedDict, the tensor rebuild function, the typed storages) to inert stand-ins, and
refuses any other with one line, before anything is called (Python's "restricting globals" recipe).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import NamedTuple

import ml_dtypes
import numpy as np

from ..errors import CnnError

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage(NamedTuple):
    key: str
    dtype: type
    numel: int


class _Tensor(NamedTuple):
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _Tensor(storage, int(offset), tuple(int(n) for n in size), tuple(int(n) for n in stride))


class _StorageType(NamedTuple):
    name: str


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of a tensor state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:60]}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        return _Storage(pid[2], STORAGES[pid[1].name], pid[4])


def _array(t: _Tensor, data: dict[str, np.ndarray]) -> np.ndarray:
    flat = data[t.storage.key]
    itemsize = flat.itemsize
    if not t.size:
        return flat[t.offset].copy()
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)) if all(t.size) else t.offset
    if min(t.stride, default=0) < 0 or last >= max(flat.size, 1):
        raise pickle.UnpicklingError("a tensor reaches past its storage")
    view = np.lib.stride_tricks.as_strided(flat[t.offset:], t.size, tuple(s * itemsize for s in t.stride),
                                           writeable=False)
    return np.ascontiguousarray(view)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """{name: array} of a legacy `.pth` state dict; CnnError (one line) for anything else or a damaged file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CnnError(f"cannot read weights {path}: {e.strerror or e}") from None
    try:
        return _parse(io.BytesIO(raw))
    except (pickle.UnpicklingError, EOFError, ValueError, struct.error, KeyError, IndexError, TypeError,
            AttributeError) as e:
        msg = str(e) or type(e).__name__
        raise CnnError(f"{path}: not a PyTorch state dict this reader accepts ({msg})") from None


def _parse(f) -> dict[str, np.ndarray]:
    if _Unpickler(f).load() != MAGIC:
        raise pickle.UnpicklingError("no PyTorch magic number (a zip-format or other file?)")
    if _Unpickler(f).load() != PROTOCOL:
        raise pickle.UnpicklingError("unknown protocol version")
    _Unpickler(f).load()  # the saving machine's type sizes: storages are written at their own width
    state = _Unpickler(f).load()
    keys = _Unpickler(f).load()
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise pickle.UnpicklingError("not a state dict")
    storages = {}
    for t in state.values():
        if not isinstance(t, _Tensor):
            raise pickle.UnpicklingError("a state dict entry that is not a tensor")
        storages[t.storage.key] = t.storage
    data = {}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        s = storages.get(key)
        if s is None or numel != s.numel:
            raise pickle.UnpicklingError(f"storage {key} does not match its tensors")
        nbytes = numel * np.dtype(s.dtype).itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise pickle.UnpicklingError("truncated: the file ends inside a tensor's data")
        data[key] = np.frombuffer(buf, s.dtype)
    missing = set(storages) - set(data)
    if missing:
        raise pickle.UnpicklingError(f"truncated: no data for storage {sorted(missing)[0]}")
    return {name: _array(t, data) for name, t in state.items()}
