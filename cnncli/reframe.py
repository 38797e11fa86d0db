"""The re-framing check: a run's test (or validation) images framed as other people's photos are.

Each kind of re-framing is one function of a uint8 HWC image at its own size and a seeded
generator; where the data set has photos (image folders, zips, TFDS records) it works on the
decoded photo before the run's resize, else on the arrays (MNIST, digits, a cache whose files are
gone). The result is then resized to the model's input exactly as training resized its images
(`resize_array`, Pillow's BILINEAR, squashed or centre-cropped as the run's `--fit`), so the "plain" kind is the split as the run saw it and every
other kind differs from it by the re-framing alone. Labels never change: a mosaic is built from
four images of the same class.

`cnn evaluate RUN --reframe` prints accuracy and error per kind beside the plain split's; choose
recipes with `--split val` (the test split is for the final figure only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .data.images import BadImage, resize_array
from .errors import CnnError
from .fsutil import write_json

PAD_FACTOR = 2.0  # padded: canvas side / photo side (the subject covers a quarter of the area)
CROP_SHARE = 0.6  # offcentre: side of the corner crop / photo side
LOWRES_SHARE = 0.5  # lowres: side the photo is reduced to / the model's input side
PORTRAIT = 3 / 4  # portrait: width / height of the upright strip
SAMPLES_SHOWN = 4  # images per kind in reframe.png
SPLITS = ("test", "val", "train")


def padded(img, rng, size):
    """Pasted at a random place in a canvas PAD_FACTOR times its side, filled with its border's median
    colour: the subject small in a larger scene."""
    h, w, c = img.shape
    ch, cw = round(h * PAD_FACTOR), round(w * PAD_FACTOR)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    out = np.empty((ch, cw, c), np.uint8)
    out[:] = np.median(border, axis=0).astype(np.uint8)
    top, left = int(rng.integers(0, ch - h + 1)), int(rng.integers(0, cw - w + 1))
    out[top : top + h, left : left + w] = img
    return out


def offcentre(img, rng, size):
    """A crop of CROP_SHARE of each side at one of the four corners: a close-up, the subject off-centre
    or cut."""
    h, w, _ = img.shape
    ch, cw = max(1, round(h * CROP_SHARE)), max(1, round(w * CROP_SHARE))
    top, left = (h - ch) * int(rng.integers(0, 2)), (w - cw) * int(rng.integers(0, 2))
    return img[top : top + ch, left : left + cw]


def rotated(img, rng, size):
    """Turned 90 degrees left or right: a portrait photo whose orientation tag was lost."""
    return np.ascontiguousarray(np.rot90(img, 1 if rng.integers(0, 2) else 3))


def portrait(img, rng, size):
    """The central upright strip of width PORTRAIT x height (or of height width / PORTRAIT when the photo
    is already narrower), which the square resize then stretches as it stretches a portrait photo."""
    h, w, _ = img.shape
    if w > h * PORTRAIT:
        cw = max(1, round(h * PORTRAIT))
        left = (w - cw) // 2
        return img[:, left : left + cw]
    ch = max(1, min(h, round(w / PORTRAIT)))
    top = (h - ch) // 2
    return img[top : top + ch]


def lowres(img, rng, size):
    """Reduced to LOWRES_SHARE of the model's input side (area averaging) and enlarged back: a small,
    blurry photo."""
    from PIL import Image

    small = (max(1, round(size[0] * LOWRES_SHARE)), max(1, round(size[1] * LOWRES_SHARE)))
    mode = "L" if img.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(img[..., 0] if mode == "L" else img, mode)
    pil = pil.resize((small[1], small[0]), Image.BOX).resize((img.shape[1], img.shape[0]), Image.BILINEAR)
    a = np.asarray(pil, np.uint8)
    return a[..., None] if a.ndim == 2 else a


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    fn: Callable | None  # None: built from several images (mosaic) or none at all (plain)


KINDS = {k.name: k for k in (
    Kind("plain", "the split as the run saw it", None),
    Kind("padded", f"in a canvas {PAD_FACTOR:g}x its side, border colour (subject small in a large scene)", padded),
    Kind("offcentre", f"corner crop of {CROP_SHARE:.0%} of the side (close-up, off-centre)", offcentre),
    Kind("rotated", "turned 90 degrees left or right", rotated),
    Kind("portrait", "central 3:4 upright strip, stretched to the square input", portrait),
    Kind("lowres", f"reduced to {LOWRES_SHARE:.0%} of the input side and enlarged back", lowres),
    Kind("mosaic", "2x2 grid of four images of the same class (several animals)", None),
)}


def mosaic(tiles: np.ndarray, y: np.ndarray, seed: int, size) -> np.ndarray:
    """For each image, a 2x2 grid of it and three other images of its class (seeded choice; repeats
    when the class has fewer than four). `tiles` are the images resized to (H // 2, W // 2)."""
    h, w = size
    th, tw = tiles.shape[1:3]
    out = np.empty((len(y), 2 * th, 2 * tw, tiles.shape[-1]), np.uint8)
    for i, label in enumerate(y):
        rng = np.random.default_rng([seed, i, len(KINDS)])
        others = np.flatnonzero((y == label) & (np.arange(len(y)) != i))
        pick = rng.choice(others, 3, replace=len(others) < 3) if len(others) else np.array([i, i, i])
        for cell, j in enumerate([i, *pick]):
            r, c = divmod(cell, 2)
            out[i, r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tiles[j]
    if (2 * th, 2 * tw) == (h, w):
        return out
    return np.stack([resize_array(m, (h, w)) for m in out])  # odd sides: the grid is a pixel short


def reframe_images(images, y: np.ndarray, size, kinds, seed: int = 0, fit: str = "squash"
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({kind: uint8 (N, H, W, C) at the model's input `size`}, labels) for an iterable of uint8 HWC
    images of any size (each is read once; None marks one that could not be decoded and is dropped)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise CnnError(f"unknown re-framing {unknown[0]!r}; choose from {', '.join(KINDS)}")
    out = {k: [] for k in kinds}
    tiles, kept = [], []
    half = (max(1, size[0] // 2), max(1, size[1] // 2))
    for i, img in enumerate(images):
        if img is None:
            continue
        kept.append(i)
        for j, k in enumerate(kinds):
            fn = KINDS[k].fn
            if k == "plain":
                out[k].append(resize_array(img, size, fit))
            elif fn is not None:
                out[k].append(resize_array(fn(img, np.random.default_rng([seed, i, j]), size), size, fit))
        if "mosaic" in kinds:
            tiles.append(resize_array(img, half, fit))
    labels = np.asarray(y)[kept]
    arrays = {k: np.stack(v) for k, v in out.items() if v}
    if "mosaic" in kinds and kept:
        arrays["mosaic"] = mosaic(np.stack(tiles), labels, seed, size)
    return {k: arrays[k] for k in kinds if k in arrays}, labels


def split_images(run, split: str):
    """(iterable of images at their own size, labels, what they are) for the run's `split`: the source
    photos where they are on this machine, else the arrays the data set loads."""
    from .data.loader import source_split
    from .evaluate import dataset_for, run_data_dir
    from .checks import seed_value

    cfg = run.config
    part = source_split(cfg["dataset"], split, data_dir=run_data_dir(cfg), val_split=cfg.get("val_split", 0.0),
                        limit=cfg.get("limit"), balance=bool(cfg.get("balance")),
                        seed=seed_value(cfg.get("seed", 0)))  # as training computed with it
    mode = "L" if run.input_shape[-1] == 1 else "RGB"
    if part is not None and len(part.y):
        from .data.sources import ArrayItems

        what = "the data set's arrays" if isinstance(part.items, ArrayItems) else "source photos before the resize"
        return _natives(part.items, len(part.y), mode), part.y, what
    ds, _ = dataset_for(run)
    arrays = getattr(ds, split)
    if arrays is None or not len(arrays.y):
        raise CnnError(f"data set {ds.name!r} has no {split} split")
    return iter(arrays.x), arrays.y, "the data set's arrays (no source photos here)"


def _natives(items, n: int, mode: str):
    for i in range(n):
        try:
            yield items.native(i, mode)
        except BadImage:
            yield None  # training skipped it too


def reframe_run(run_dir, split: str = "test", kinds=None, checkpoint: str = "best", seed: int = 0,
                write: bool = True) -> dict:
    """Accuracy per kind of re-framing of the run's `split`, with error against the plain split's;
    with `write`, reframe[_<split>].json and a sample grid reframe[_<split>].png in the run directory."""
    from .evaluate import _labels_in_model_order, metrics
    from .runs import load_run

    if split not in SPLITS:
        raise CnnError(f"--reframe takes --split {', '.join(SPLITS)}, not {split!r}")
    kinds = list(kinds or KINDS)
    if "plain" not in kinds:
        kinds.insert(0, "plain")
    run = load_run(run_dir, which=checkpoint)
    images, y, origin = split_images(run, split)
    arrays, y = reframe_images(images, y, run.input_shape[:2], kinds, seed, run.fit)  # fitted as training's were
    if not len(y):
        raise CnnError(f"no {split} images could be read")
    y, notes = _labels_in_model_order(y, run.config["data"]["classes"], run.classes)
    from . import calibrate

    rows = []
    for k in kinds:
        probs = run.probabilities(arrays[k])
        m = metrics(y, probs, run.classes)
        row = {"kind": k, "description": KINDS[k].description, "n": int(len(y)), "accuracy": m["accuracy"],
               "error": 1.0 - m["accuracy"], "loss": m["loss"]}
        if run.calibration and calibrate.is_unsure(0.0, run.calibration) is not None:
            cal = calibrate.apply(probs, run.calibration["temperature"])
            unsure = np.array([calibrate.is_unsure(float(p), run.calibration) for p in cal.max(-1)])
            row["unsure_share"] = float(unsure.mean())
            row["accuracy_sure"] = None if unsure.all() else float((cal.argmax(-1) == y)[~unsure].mean())
        rows.append(row)
    plain = rows[0]["error"]
    for r in rows:
        r["error_vs_plain"] = r["error"] - plain  # in accuracy units: +0.05 is 5 points more error
        r["error_ratio"] = r["error"] / plain if plain else None
    result = {"run_dir": str(run_dir), "dataset": run.config["dataset"], "split": split, "checkpoint": checkpoint,
              "images": origin, "seed": seed, "rows": rows, "notes": notes, "files": {}}
    if write:
        tag = "" if split == "test" else f"_{split}"
        result["files"] = {"report": str(Path(run_dir) / f"reframe{tag}.json"),
                           "samples": str(_samples_png(arrays, y, run.classes, Path(run_dir) / f"reframe{tag}.png"))}
        write_json(result["files"]["report"], result)
    return result


def _samples_png(arrays: dict, y, classes, path: Path) -> Path:
    """SAMPLES_SHOWN images of every kind, one row per kind, spread over the split (which lists its
    images class by class, so every class shows)."""
    from . import plots

    picked = np.unique(np.linspace(0, len(y) - 1, min(SAMPLES_SHOWN, len(y))).round().astype(int))
    images = [arrays[k][i] for k in arrays for i in picked]
    labels = [f"{k}: {classes[y[i]]}" for k in arrays for i in picked]
    return plots.image_grid(images, labels, path, "re-framed images as the model sees them", cols=len(picked))
