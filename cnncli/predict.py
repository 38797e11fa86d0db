"""Classifying image files with a trained run: decoding, digit normalisation, batched prediction.

Every file is decoded by the data layer's `decode_image`, the function training used, so a photo
is converted and resized exactly as the training photos were. For digit models (MNIST, digits)
a photo is first brought to the data set's look, the way both were made from binary scans: light
ink on a black background (a dark digit on paper is inverted), the ink separated from the paper,
cropped, scaled with area averaging so its longer side fills the data set's box (grey edges, as
MNIST's anti-aliasing made them) and placed by centre of mass, as LeCun et al. prepared MNIST. Bad files give one error line each; the
others still run. Probabilities are calibrated with the run's temperature, and a prediction below the
run's unsure threshold says "unsure" (both chosen on its validation split, see calibrate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import calibrate
from .checks import INVERT_CHOICES
from .errors import CnnError

DIGIT_CLASSES = [str(d) for d in range(10)]
# MNIST digits were scaled to fit a 20x20 box inside the 28x28 frame; scikit-learn's 8x8 digits fill theirs.
DIGIT_BOX = {"mnist": 20 / 28, "digits": 1.0}
MAX_WORK_SIDE = 512  # digit photos are reduced to this before the ink search (a 12 MP photo takes seconds)
MIN_CONTRAST = 32  # ink must stand this far above the background (0..255) to be found
INK_THRESHOLD = 0.5  # share of the ink's range above which a pixel is ink (the rest, grain and shadow, is paper)
CHUNK = 512  # files decoded and predicted at a time (bounds memory for big folders)


@dataclass
class Prepared:
    """One decoded input as the model will see it, and what was done to it."""

    x: np.ndarray  # uint8 (H, W, C) of the model's input shape
    notes: list[str]
    # Where the file's pixels went: model input rows/cols [top:top+h, left:left+w] hold the file's
    # [y0:y1, x0:x1], as (top, left, h, w, y0, x0, y1, x1); None: the whole file was resized to the
    # input. `explain` maps its saliency back onto the file with it.
    frame: tuple | None = None


def collect_inputs(paths) -> tuple[list[Path], int]:
    """(files to classify, files skipped): folders are walked recursively in sorted order.

    Inside folders only files with an image extension are taken and hidden files are skipped
    (.DS_Store, Thumbs.db); a file named on the command line is always tried.
    """
    from .data.images import IMAGE_EXTS

    files, skipped = [], 0
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
            continue
        for f in sorted(p.rglob("*")):
            if not f.is_file() or any(part.startswith(".") for part in f.relative_to(p).parts):
                continue
            if f.suffix.lower() in IMAGE_EXTS:
                files.append(f)
            else:
                skipped += 1
    return files, skipped


def digit_box(run) -> float | None:
    """The share of the frame a digit's longer side fills for a digit model, None for other models."""
    if "digit_box" in run.config:  # an export (exported.Exported) carries the rule in its metadata
        return run.config["digit_box"]
    name = run.config.get("data", {}).get("name") or Path(str(run.config.get("dataset", ""))).name
    if name in DIGIT_BOX:
        return DIGIT_BOX[name]
    if run.input_shape[-1] == 1 and list(run.classes) == DIGIT_CLASSES:
        return DIGIT_BOX["mnist"]  # a digit folder: assume MNIST's conventions
    return None


def prepare(path, run, invert: str = "auto") -> Prepared:
    """Decode `path` into the model's input; raises CnnError with a one-line reason for a bad file."""
    from .data import decode_image

    if invert not in INVERT_CHOICES:
        raise CnnError(f"--invert must be one of {', '.join(INVERT_CHOICES)}, not {invert!r}")
    h, w, c = run.input_shape
    mode = "L" if c == 1 else "RGB"
    box = digit_box(run)
    if box is None:
        return Prepared(decode_image(path, (h, w), mode, getattr(run, "fit", "squash")), [])
    gray = decode_image(path, None, "L")[..., 0]
    inverted = invert == "yes" or (invert == "auto" and background_is_light(gray))
    if gray.shape == (h, w) and not inverted:
        return Prepared(gray[..., None], [])  # already a data set image: leave it alone
    placed = _centre_digit(255 - gray if inverted else gray, (h, w), box)
    notes = (["inverted"] if inverted else []) + (["centred"] if placed is not None else ["no digit found, resized"])
    if placed is None:
        from .data.images import resize_array

        return Prepared(resize_array((255 - gray if inverted else gray)[..., None], (h, w)), notes)
    return Prepared(placed[0][..., None], notes, placed[1])


def background_is_light(gray: np.ndarray) -> bool:
    """True when the image's border (its background, for a centred subject) is light: dark ink on paper."""
    return float(np.median(_border(gray))) > 127


def _border(g: np.ndarray) -> np.ndarray:
    """The pixels of the outer ring, 1/16 of the side wide (at least 1 pixel)."""
    h, w = g.shape
    b = max(1, min(h, w) // 16)
    ring = np.ones((h, w), bool)
    ring[b : h - b, b : w - b] = False
    return g[ring]


def centre_digit(gray: np.ndarray, size: tuple[int, int], box: float) -> np.ndarray | None:
    """Light-on-dark `gray` (H, W) -> uint8 `size`: ink made binary and cropped, its longer side scaled to
    `box` of the frame, placed by centre of mass. None when no ink stands out from the background.

    Binary ink scaled down by area averaging is how both MNIST (NIST scans, anti-aliased to 20x20)
    and scikit-learn's digits (32x32 bitmaps, 4x4 blocks counted) were made.
    """
    placed = _centre_digit(gray, size, box)
    return None if placed is None else placed[0]


def _centre_digit(gray: np.ndarray, size: tuple[int, int], box: float):
    """`centre_digit`'s (digit, frame), frame as in `Prepared.frame`; None when no ink stands out."""
    from PIL import Image

    g = _reduce(gray).astype(np.float32)
    back = gray.shape[0] / g.shape[0], gray.shape[1] / g.shape[1]  # reduced -> file pixels
    g = np.clip(g - np.median(_border(g)), 0, None)
    hi = float(g.max())
    if hi < MIN_CONTRAST:
        return None
    ink = np.where(g > INK_THRESHOLD * hi, 255, 0).astype(np.uint8)
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    fh, fw = size
    target = max(1, round(min(fh, fw) * box))
    scale = target / max(crop.shape)
    ph, pw = (min(fh, max(1, round(s * scale))) for s in crop.shape)
    filt = Image.BOX if max(crop.shape) > target else Image.BILINEAR  # area average down, smooth up
    patch = np.asarray(Image.fromarray(crop).resize((pw, ph), filt), np.float32)
    top, left = _place(patch, (fh, fw))
    out = np.zeros((fh, fw), np.float32)
    out[top : top + ph, left : left + pw] = patch
    frame = (top, left, ph, pw, round(rows[0] * back[0]), round(cols[0] * back[1]),
             round((rows[-1] + 1) * back[0]), round((cols[-1] + 1) * back[1]))
    return np.clip(np.round(out), 0, 255).astype(np.uint8), frame


def _reduce(gray: np.ndarray) -> np.ndarray:
    """Shrink a big photo (box filter) so the ink search is fast; small images are kept."""
    from PIL import Image

    h, w = gray.shape
    if max(h, w) <= MAX_WORK_SIDE:
        return gray
    s = MAX_WORK_SIDE / max(h, w)
    return np.asarray(Image.fromarray(gray).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BOX))


def _place(patch: np.ndarray, frame: tuple[int, int]) -> tuple[int, int]:
    """(top, left) putting the patch's centre of mass at the frame's centre, kept inside the frame."""
    ph, pw = patch.shape
    total = patch.sum()
    cy = (patch.sum(1) @ np.arange(ph)) / total if total else (ph - 1) / 2
    cx = (patch.sum(0) @ np.arange(pw)) / total if total else (pw - 1) / 2
    top = int(round((frame[0] - 1) / 2 - cy))
    left = int(round((frame[1] - 1) / 2 - cx))
    return min(max(top, 0), frame[0] - ph), min(max(left, 0), frame[1] - pw)


def predict_files(run, files: list[Path], top_k: int = 3, invert: str = "auto") -> list[dict]:
    """One result per file, in order: {file, class, probability, top_k, note[, p1]} or {file, error}."""
    from .console import task_progress

    results = []
    with task_progress("classifying", len(files), "files", show_below=100) as advance:
        for start in range(0, len(files), CHUNK):
            results += _predict_chunk(run, files[start : start + CHUNK], top_k, invert, advance)
    return results


def _predict_chunk(run, chunk: list[Path], top_k: int, invert: str, advance) -> list[dict]:
    """`predict_files` for at most CHUNK files: decode them all, predict the good ones in one batch."""
    results = []
    prepared: dict[int, Prepared] = {}
    errors: dict[int, str] = {}
    for i, f in enumerate(chunk):
        try:
            prepared[i] = prepare(f, run, invert)
        except CnnError as e:
            errors[i] = _without_path(str(e), f)
        advance()  # decoding is the slow part of a folder of photos
    order = sorted(prepared)
    probs = calibrated(run, run.probabilities(np.stack([prepared[i].x for i in order]))) if order else None
    row_of = {i: r for r, i in enumerate(order)}
    for i, f in enumerate(chunk):
        if i in errors:
            results.append({"file": str(f), "error": errors[i]})
        else:
            results.append(result(run, f, probs[row_of[i]], prepared[i].notes, top_k))
    return results


def calibrated(run, probs: np.ndarray) -> np.ndarray:
    """`probs` with the run's temperature applied (fitted on its validation split; see calibrate.py)."""
    return calibrate.apply(probs, run.calibration["temperature"]) if run.calibration else probs


def _without_path(msg: str, f: Path) -> str:
    """The data layer prefixes its reasons with the path; the result already names the file."""
    prefix = f"{f}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def result(run, f, p: np.ndarray, notes: list[str], top_k: int) -> dict:
    """One classified input as `predict --json` (and `serve`) report it; `f` names it."""
    best = np.argsort(-p, kind="stable")[: max(1, min(top_k, len(p)))]
    unsure = calibrate.is_unsure(float(p[best[0]]), run.calibration)  # None: the run chose no threshold
    out = {
        "file": str(f),
        "class": run.classes[int(best[0])],
        "probability": float(p[best[0]]),
        "top_k": [{"class": run.classes[int(i)], "probability": float(p[i])} for i in best],
        "unsure": unsure,
        "note": ", ".join((["unsure"] if unsure else []) + notes),
    }
    if run.binary_head:  # the sigmoid's output, P(class 1), as the seed printed it: "0.902 -> dog"
        out["p1"] = float(p[1])
    return out


def describe(r: dict) -> str:
    """The probability cell of the text table: "0.9812", or "0.902 -> dog" for a binary head."""
    if "p1" in r:
        return f"{r['p1']:.3f} -> {r['class']}"
    return f"{r['probability']:.4f}"


def csv_text(results: list[dict]) -> str:
    """CSV for scripts: file,class,probability,top_k,note,error (top_k as class:p;class:p)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "class", "probability", "top_k", "note", "error"])
    for r in results:
        if "error" in r:
            w.writerow([r["file"], "", "", "", "", r["error"]])
        else:
            top = ";".join(f"{t['class']}:{t['probability']:.6f}" for t in r["top_k"])
            w.writerow([r["file"], r["class"], f"{r['probability']:.6f}", top, r["note"], ""])
    return buf.getvalue()
