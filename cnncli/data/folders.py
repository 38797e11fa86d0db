"""Listing image folders and zip archives (no decoding): which file is which class, per split.

Layouts (Keras `image_dataset_from_directory` / Ultralytics classify):
  root/<class>/**/*.jpg                                  one pool; a test split is carved later
  root/train/<class>/...  [root/val/<class>/...]  [root/test/<class>/...]
`val` may also be spelled `valid` or `validation`. Class names are the sub-folder names in
sorted order (label = position), unless the registry fixes them (cifar10, cats_vs_dogs), in
which case folder names are matched case-insensitively (`PetImages/Cat` -> `cat`).
Hidden files and files that are not images by extension are ignored.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CnnError
from .images import IMAGE_EXTS

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass
class Listing:
    """Files of a data set per split: refs `(container, name)` and their labels, in a stable order."""

    classes: list[str]
    splits: dict[str, tuple[list[tuple[str | None, str]], np.ndarray]]


def has_split_dirs(root: Path) -> bool:
    return (root / "train").is_dir()


def list_folder(root: Path, classes: list[str] | None = None) -> Listing:
    """List an image folder in either layout; `classes` fixes names and order when known."""
    if has_split_dirs(root):
        parts = {s: d for s, names in SPLIT_DIRS.items() for d in (_subdir(root, names),) if d is not None}
    else:
        parts = {"all": root}
    per_split = {s: _class_files(d) for s, d in parts.items()}
    found = sorted({c for files in per_split.values() for c in files})
    classes = _match_classes(root, found, classes)
    index = {c.lower(): i for i, c in enumerate(classes)}
    splits = {}
    for split, files in per_split.items():
        refs, labels = [], []
        for cls, paths in sorted(files.items()):
            refs += [(None, p) for p in paths]
            labels += [index[cls.lower()]] * len(paths)
        splits[split] = (refs, np.asarray(labels, np.int32))
    if not any(len(r) for r, _ in splits.values()):
        raise CnnError(f"{root}: no images found (expected {root}/<class>/*.jpg or {root}/train/<class>/*.jpg)")
    return Listing(classes, splits)


def list_zip(path: Path, classes: list[str], member_re: str) -> Listing:
    """List a zip of class folders (e.g. kagglecatsanddogs: PetImages/Cat/0.jpg) as one pool.

    `member_re` has one group, the class folder name; other members (readme, Thumbs.db) are ignored.
    """
    pattern = re.compile(member_re)
    index = {c.lower(): i for i, c in enumerate(classes)}
    try:
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if not n.endswith("/"))
    except (OSError, zipfile.BadZipFile) as e:
        raise CnnError(f"{path}: not a readable zip archive ({e})") from None
    refs, labels = [], []
    for name in names:
        m = pattern.match(name)
        if m and m.group(1).lower() in index and Path(name).suffix.lower() in IMAGE_EXTS:
            refs.append((str(path), name))
            labels.append(index[m.group(1).lower()])
    if not refs:
        raise CnnError(f"{path}: no images matching {member_re} in the archive")
    return Listing(list(classes), {"all": (refs, np.asarray(labels, np.int32))})


def _subdir(root: Path, names) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _class_files(folder: Path) -> dict[str, list[str]]:
    """{class folder name: sorted image file paths under it, recursively}."""
    return {
        entry.name: _images_under(entry.path)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name)
        if entry.is_dir() and not entry.name.startswith(".")
    }


def _images_under(folder: str) -> list[str]:
    """Image files under `folder` (plain strings: pathlib costs seconds on 60,000 files)."""
    files, subdirs = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subdirs.append(entry.path)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS:
            files.append(entry.path)
    for sub in subdirs:
        files += _images_under(sub)
    return files


def _match_classes(root: Path, found: list[str], classes: list[str] | None) -> list[str]:
    """The class list: the registry's when given (every folder must be one of them), else the folders'."""
    if classes is None:
        lowered = [c.lower() for c in found]
        if len(set(lowered)) != len(lowered):
            raise CnnError(f"{root}: class folders differ only by case: {', '.join(found)}")
        if not found:
            raise CnnError(f"{root}: no class sub-folders (expected {root}/<class>/*.jpg)")
        return found
    known = {c.lower() for c in classes}
    unknown = [f for f in found if f.lower() not in known]
    if unknown:
        raise CnnError(f"{root}: unexpected class folder(s) {', '.join(unknown)}; expected {', '.join(classes)}")
    return list(classes)
