"""`load_dataset`: from a name or folder to uint8 train/val/test arrays, through the cache.

Where arrays come from, in this order:
1. the cache (`cache.py`), keyed by the identity of the files `sources.locate` finds and by the
   preprocessing: a hit costs a directory listing and a memory map;
2. those files, decoded once (in parallel) and written to the cache;
3. a cache entry of the same data set and preprocessing whose files are gone;
4. else a CnnError saying how to get the data.

Selections (validation carve, balance, limit) are made on the source's items, not on the
decoded rows, so that a quick `limit=` run that decodes only its own files (when the full
cache does not exist yet) picks exactly the images the same run would pick from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..host import data_dir_named
from ..errors import CnnError
from . import cache
from .images import FITS
from .registry import DatasetSpec, get_spec
from .sources import FileItems, Part, Source, locate, raise_not_found
from .splits import balanced_subset, channel_stats, class_counts, stratified_split, stratified_subset


@dataclass
class Split:
    """Images and labels of one split. A whole cached split is a read-only memory map: copy to write."""

    x: np.ndarray  # uint8 (N, H, W, C)
    y: np.ndarray  # int32 (N,)
    ids: np.ndarray | None = None  # each row's item number in the source's split `base` (for file names)
    base: str | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    name: str
    classes: list[str]
    shape: tuple[int, int, int]  # (H, W, C) of x
    train: Split
    val: Split | None
    test: Split | None
    mean: tuple[float, ...]  # per channel, of train x/255
    std: tuple[float, ...]
    fingerprint: str  # hash of source identity + preprocessing
    info: dict = field(default_factory=dict)
    source: Source | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def files(self, split: str) -> list[str] | None:
        """The file each row of `split` was decoded from (zip members as ARCHIVE:MEMBER), for data sets
        read from image files; None for array formats (MNIST IDX, CIFAR binaries, scikit-learn)."""
        part = getattr(self, split)
        if part is None or part.ids is None or self.source is None or not _decodes_files(self.source):
            return None
        items = self.source.parts[part.base].items
        if not isinstance(items, FileItems):
            return None
        return [name if container is None else f"{container}:{name}"
                for container, name in (items.refs[int(i)] for i in part.ids)]


def load_dataset(
    name_or_path: str,
    *,
    data_dir=None,
    image_size: int | None = None,
    val_split: float = 0.0,
    limit: int | None = None,
    balance: bool = False,
    seed: int = 0,
    fit: str = "squash",
) -> Dataset:
    """Load a registry data set or an image folder as uint8 arrays (see the module docstring).

    `image_size` resizes to a square (default: native size; 128 for photos of varied size),
    `val_split` carves a stratified seeded validation set from train (never from test),
    `limit` keeps a stratified seeded N train images (and at most N//5 of val and test),
    `balance` undersamples every split to its smallest class, `fit` is how an image meets a size other
    than its own (`decode_image`: squash it whole, or crop its centre).
    """
    _check_args(image_size, val_split, limit)
    if fit not in FITS:
        raise CnnError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    spec = get_spec(name_or_path)
    prep = _requested_prep(spec, image_size)
    if fit != "squash":  # the cache keys of squashed arrays stay what they were
        prep["fit"] = fit
    source = locate(spec, data_dir)
    named, by = (data_dir, "--data-dir") if data_dir is not None else (data_dir_named(), "$CNN_DATA_DIR")
    if source is None and named and not Path(named).expanduser().is_dir():
        # Not the cache's copy of some other folder, without a word: the user named this one.
        raise CnnError(f"data folder {named} (from {by}) does not exist; "
                       f"pass the folder that holds {spec.name}/, or leave it out to use the default")
    if source is None:
        entry = cache.find_latest(spec.name, prep)
        if entry is None:
            raise_not_found(spec, data_dir)
        store, problem = _cached_store(entry, "source files not found any more; loaded from the cache built from them")
        if store is None:
            raise CnnError(f"the cached arrays of {spec.name} are damaged ({problem}) and their source files are "
                           f"gone; run `cnn download {spec.name}` or pass --data-dir DIR")
    else:
        key = cache.make_key(source.identity(), prep)
        store, problem = _open_key(spec, key)
        if store is None and limit and _decodes_files(source):
            store = _LiveStore(source, image_size, key, fit)  # decode only the picked files; no cache
        elif store is None:
            with cache.building(spec.name, key):  # one builder per entry: the others wait, then read it
                store, again = _open_key(spec, key)
                if store is None:
                    store = _CachedStore(build_entry(source, spec, key, prep, image_size, fit))
            problem = problem or again
        if problem:  # never fatal: the source is here, so the entry was built again
            store.note = f"cache entry {cache.entry_dir(spec.name, key)} was damaged ({problem}); " + (
                store.note or "rebuilt it from the source files")
    return _assemble(spec, store, val_split, limit, balance, seed, source)


def source_split(name_or_path: str, split: str, *, data_dir=None, val_split: float = 0.0, limit: int | None = None,
                 balance: bool = False, seed: int = 0) -> Part | None:
    """The items `load_dataset` with these arguments picks for `split`, undecoded (labels, and each item
    readable at its own size with `items.native`); None when the source files are not on this machine."""
    spec = get_spec(name_or_path)
    source = locate(spec, data_dir)
    if source is None:
        return None
    labels = {s: p.y for s, p in source.parts.items()}
    picks, _ = _pick(labels, val_split, limit, balance, seed, len(source.classes))
    if split not in picks:
        return None
    base, ids = picks[split]
    return source.parts[base].take(ids)


def _open_key(spec, key: str):
    """(store over the complete entry of `key`, None), (None, None) without one, or (None, why) when
    it was damaged (and is now removed)."""
    entry = cache.open_entry(spec.name, key)
    if entry is None:
        return None, None
    store, problem = _cached_store(entry)
    if problem:
        cache.remove(entry)
    return store, problem


def _cached_store(entry: cache.Entry, note: str | None = None):
    """(store over `entry`, None), or (None, why) when its arrays are damaged."""
    problem = cache.damage(entry)
    if problem is None:
        try:
            return _CachedStore(entry, note), None
        except (ValueError, OSError) as e:  # an entry from before checksums, whose .npy is cut short
            problem = str(e)
    return None, problem


def build_entry(source: Source, spec: DatasetSpec, key: str, prep: dict, image_size, fit="squash") -> cache.Entry:
    """Decode every item of every split once and write the cache entry."""
    size, mode = source.target(image_size)
    arrays, skipped, counts = {}, [], {}
    for split, part in source.parts.items():
        x, ok, bad = part.items.fetch(np.arange(len(part.y)), size, mode, fit)
        arrays[split] = (x, part.y[ok], ok)
        counts[split] = {"items": len(part.y), "rows": len(ok)}
        skipped += [_skip_record(split, part, pos, reason) for pos, reason in bad]
    mean, std = channel_stats(arrays["train"][0])
    meta = {
        "name": spec.name,
        "source": str(source.path),
        "kind": source.kind,
        "classes": source.classes,
        "prep": prep,
        "size": list(size),
        "mode": mode,
        "splits": counts,
        "skipped": skipped,
        "test_split": source.test_note,
        "train_stats": {"mean": mean, "std": std},
    }
    return cache.write_entry(spec.name, key, meta, arrays)


def _skip_record(split, part, pos, reason) -> dict:
    return {"split": split, "index": int(pos), "label": int(part.y[pos]), "file": part.items.name(pos), "reason": reason}


# --- stores: where rows come from once the items are picked -------------------------------------


class _CachedStore:
    """Rows from a cache entry (memory-mapped)."""

    def __init__(self, entry: cache.Entry, note: str | None = None):
        self.entry, self.meta, self.note = entry, entry.meta, note
        self.key = entry.meta["key"]
        self.cache_dir = str(entry.dir)
        self._arrays = {s: entry.arrays(s) for s in entry.splits}
        self.skipped = self.meta["skipped"]

    def item_labels(self) -> dict[str, np.ndarray]:
        """Labels of every source item per split, skipped ones included (rebuilt from meta)."""
        out = {}
        for split, (_, y, ids) in self._arrays.items():
            labels = np.zeros(self.meta["splits"][split]["items"], np.int32)
            labels[np.asarray(ids)] = y
            for s in self.skipped:
                if s["split"] == split:
                    labels[s["index"]] = s["label"]
            out[split] = labels
        return out

    def rows(self, split: str, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y, ids = self._arrays[split]
        if len(item_ids) == len(ids) + sum(s["split"] == split for s in self.skipped):
            return x, np.asarray(y), np.asarray(ids)  # the whole split: hand out the memory map itself, no copy
        pos = np.searchsorted(ids, item_ids)
        pos = pos[(pos < len(ids)) & (np.asarray(ids)[np.minimum(pos, len(ids) - 1)] == item_ids)]
        return np.asarray(x[pos]), np.asarray(y[pos]), np.asarray(ids)[pos]

    def full_train_stats(self):
        stats = self.meta.get("train_stats")
        return (tuple(stats["mean"]), tuple(stats["std"])) if stats else None


class _LiveStore:
    """Rows decoded straight from the source (a `limit=` run before the cache exists)."""

    def __init__(self, source: Source, image_size, key: str, fit: str = "squash"):
        self.source, self.key, self.fit = source, key, fit
        size, mode = source.target(image_size)
        self.size, self.mode = size, mode
        self.meta = {
            "source": str(source.path), "kind": source.kind, "classes": source.classes,
            "size": list(size), "mode": mode, "test_split": source.test_note,
        }  # fmt: skip
        self.cache_dir = None
        self.note = "decoded only the picked files: the full cache does not exist yet (`cnn download` builds it)"
        self.skipped = []

    def item_labels(self):
        return {s: p.y for s, p in self.source.parts.items()}

    def rows(self, split, item_ids):
        part = self.source.parts[split]
        x, ok, bad = part.items.fetch(item_ids, self.size, self.mode, self.fit)
        self.skipped += [_skip_record(split, part, int(item_ids[pos]), reason) for pos, reason in bad]
        return x, part.y[item_ids][ok], np.asarray(item_ids)[ok]

    def full_train_stats(self):
        return None


# --- assembling the Dataset ---------------------------------------------------------------------


def _assemble(spec, store, val_split, limit, balance, seed, source=None) -> Dataset:
    classes = list(store.meta["classes"])
    labels = store.item_labels()
    picks, val_note = _pick(labels, val_split, limit, balance, seed, len(classes))
    splits = {}
    for out, (base, ids) in picks.items():
        x, y, kept = store.rows(base, ids)
        if balance and len(set(class_counts(y, len(classes))) - {0}) > 1:  # skipped files unbalanced it
            keep = balanced_subset(y, seed, len(classes))
            x, y, kept = np.asarray(x[keep]), y[keep], kept[keep]
        splits[out] = Split(x, y.astype(np.int32, copy=False), kept, base)
    train = splits["train"]
    if len(train) == 0:
        raise CnnError(f"data set {spec.name!r} has no training images left (all skipped or limit too small)")
    whole = len(picks["train"][1]) == len(labels["train"])  # train untouched: its stats are cached
    stats = store.full_train_stats() if whole else None
    mean, std = stats or channel_stats(train.x)
    info = {
        "source": store.meta["source"],
        "kind": store.meta["kind"],
        "cache": store.cache_dir,
        "image_size": list(train.x.shape[1:3]),
        "mode": store.meta["mode"],
        "test_split": store.meta["test_split"],
        "val_split": val_note,
        "counts": {k: class_counts(s.y, len(classes)) for k, s in splits.items()},
        "skipped": list(store.skipped),
        "limit": limit,
        "balance": balance,
        "seed": seed,
    }
    if store.note:
        info["note"] = store.note
    return Dataset(
        name=spec.name,
        classes=classes,
        shape=tuple(int(d) for d in train.x.shape[1:]),
        train=train,
        val=splits.get("val"),
        test=splits.get("test"),
        mean=mean,
        std=std,
        fingerprint=store.key[:16],
        info=info,
        source=source,
    )


def _pick(labels, val_split, limit, balance, seed, k):
    """{output split: (source split, sorted item ids)} after val carve, balance and limit."""
    picks = {"train": ("train", np.arange(len(labels["train"])))}
    if "val" in labels:
        picks["val"] = ("val", np.arange(len(labels["val"])))
        val_note = "the source's own val split" + (" (val_split ignored)" if val_split else "")
    elif val_split:
        kept, taken = stratified_split(labels["train"], val_split, seed)
        picks["train"], picks["val"] = ("train", kept), ("train", taken)
        val_note = f"carved: {val_split:g} of train, stratified, seed {seed}"
    else:
        val_note = None
    if "test" in labels:
        picks["test"] = ("test", np.arange(len(labels["test"])))
    for out, (base, ids) in picks.items():
        if balance:
            ids = ids[balanced_subset(labels[base][ids], seed, k)]
        if limit:
            n = limit if out == "train" else max(1, limit // 5)
            ids = ids[stratified_subset(labels[base][ids], n, seed)]
        picks[out] = (base, ids)
    return picks, val_note


def _requested_prep(spec: DatasetSpec, image_size) -> dict:
    """The preprocessing part of the cache key, before any file is looked at."""
    h, w, c = spec.shape
    if h is not None:
        side = image_size or h
        return {"size": [side, side if image_size else w], "mode": "L" if c == 1 else "RGB"}
    if spec.folder is None:
        return {"size": [image_size or spec.default_size] * 2, "mode": "RGB"}
    return {"size": [image_size] * 2 if image_size else "auto", "mode": "auto"}


def _decodes_files(source: Source) -> bool:
    """Whether building the cache means decoding files (slow) rather than copying arrays."""
    return source.kind in ("image-folder", "zip", "tfds")


def _check_args(image_size, val_split, limit):
    if image_size is not None and not (isinstance(image_size, (int, np.integer)) and 4 <= image_size <= 4096):
        raise CnnError(f"image size must be an integer from 4 to 4096, not {image_size!r}")
    if not 0.0 <= float(val_split) < 1.0:
        raise CnnError(f"val_split must be in [0, 1), not {val_split}")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise CnnError(f"limit must be a positive integer, not {limit!r}")
