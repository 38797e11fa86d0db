"""Checkpoints: every array of the train state by its tree path, in msgpack (flax.serialization), no pickle.

Stored by path (not by position) so that loading into a model of another architecture fails with
a message naming the first layer that differs. Written atomically: a kill at any moment leaves the
previous file intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from ..errors import CnnError
from ..faultpoints import point
from ..fsutil import atomic_path


def path_str(path) -> str:
    parts = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
        if name == "value" and type(k).__name__ == "GetAttrKey":
            continue  # nnx.Variable's own attribute: noise in the names
        parts.append(str(name))
    return "/".join(parts)


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_impl(leaf):
    """The PRNG implementation of a key leaf, concrete or abstract (the models use "rbg" keys)."""
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return str(leaf.dtype)[len("key<"):-1]  # dtype prints as key<rbg>; no public accessor for it
    return jax.random.key_impl(leaf)


def flatten(tree) -> dict[str, np.ndarray]:
    """{path: numpy array}; RNG keys are stored as their raw key data."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if leaf is None:
            continue
        out[path_str(path)] = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    return out


def unflatten_into(template, arrays: dict[str, np.ndarray], what: str):
    """Fill `template`'s leaves from `arrays` by path, checking every shape; CnnError on mismatch."""
    leaves = jax.tree_util.tree_flatten_with_path(template)[0]
    missing = [path_str(p) for p, _ in leaves if path_str(p) not in arrays]
    if missing:
        raise CnnError(f"{what}: checkpoint has no entry for {missing[0]!r} (saved from another architecture?)")
    new = []
    for path, leaf in leaves:
        name = path_str(path)
        arr = arrays[name]
        if _is_key(leaf):
            new.append(jax.random.wrap_key_data(arr, impl=_key_impl(leaf)))
            continue
        if tuple(arr.shape) != tuple(np.shape(leaf)):
            raise CnnError(
                f"{what}: layer {name!r} has shape {tuple(np.shape(leaf))} in the model but "
                f"{tuple(arr.shape)} in the checkpoint (another architecture or input shape?)"
            )
        new.append(arr.astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), new)


def save(path: Path, state, meta: dict) -> None:
    """Write {meta (JSON), state arrays by path} to `path` atomically."""
    blob = {"meta": json.dumps(meta), "state": flatten(jax.device_get(state))}
    data = serialization.msgpack_serialize(blob)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
        point(f"checkpoint-written:{path.stem}")


def load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, {path: array}); CnnError if missing, unreadable, not of our layout, or not finite."""
    path = Path(path)
    if not path.is_file():
        raise CnnError(f"no checkpoint at {path}")
    data = path.read_bytes()  # an OSError here is the CLI's one line (guard.py)
    try:
        blob = serialization.msgpack_restore(data)
        meta, state = json.loads(blob["meta"]), blob["state"]
    except Exception as e:  # truncated or not ours: one line, not a traceback
        raise CnnError(f"checkpoint {path} is unreadable ({type(e).__name__}); it may be truncated") from None
    if not isinstance(meta, dict) or not isinstance(state, dict):
        raise CnnError(f"checkpoint {path} is not a cnn checkpoint (no meta and state records)")
    for name, arr in state.items():
        if not isinstance(arr, np.ndarray):
            raise CnnError(f"checkpoint {path}: entry {name!r} is a {type(arr).__name__}, not an array")
        # What a train state holds: real floats, integers (step counts, RNG key data), booleans.
        # Complex or object arrays are not ours (a complex one loaded with ComplexWarnings, #43).
        if arr.dtype.kind not in "fiub" and arr.dtype.name != "bfloat16":
            raise CnnError(f"checkpoint {path}: entry {name!r} holds {arr.dtype} values, which no cnn model has "
                           f"(a damaged or foreign file)")
        # NaN/inf weights come from a diverged run or a damaged file: refuse them, as predictions
        # of NaN (class 0 with probability nan) would be silently wrong.
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise CnnError(f"checkpoint {path}: {name!r} holds NaN or infinite values (a diverged run or a "
                           f"damaged file); retrain, e.g. with a lower --lr")
    return meta, state


def subtree(arrays: dict, prefix: str) -> dict:
    """The entries under `prefix/` of a flat checkpoint, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}
