"""Decoding one image: the single function that training photos and `cnn predict` share.

Pillow decodes, the EXIF orientation is applied, the image is converted to RGB or L and,
when a size is asked for, resized with BILINEAR. Using this one function everywhere means
a photo at prediction time is resized exactly as the training photos were.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import CnnError

# Pillow only warns between 1x and 2x its pixel limit; a data set or an upload must not eat the
# memory: an error, as beyond 2x. Set once here (a `catch_warnings` around every image cost cnn
# serve ~40 us of each one-image request).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
JPEG_EXTS = frozenset({".jpg", ".jpeg"})
MODES = ("RGB", "L")
# Modes whose pixels carry no colour: a folder made only of these loads as one channel.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


class BadImage(CnnError):
    """A file that is not a decodable image; `reason` is a short phrase fit for counting."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"{label}: {reason}" if label else reason)
        self.reason = reason


def decode_image(path_or_bytes, size=None, mode: str = "RGB", fit: str = "squash") -> np.ndarray:
    """Decode a file path or encoded bytes into uint8 (H, W, C); C is 3 for RGB, 1 for L.

    `size` is (H, W) (or one int for a square); None keeps the image's own size. `fit`: "squash"
    resizes the whole image to `size`; "crop" keeps its aspect ratio, resizing it to cover `size`
    and cutting the centre (how ImageNet-trained networks were evaluated).
    Raises `BadImage` (a CnnError) with a one-line reason for empty, truncated, non-image
    or decompression-bomb input.
    """
    if mode not in MODES:
        raise CnnError(f"image mode must be one of {', '.join(MODES)}, not {mode!r}")
    label, data = _read(path_or_bytes)
    img = open_image(data, label)
    return to_array(img, _hw(size), mode, label, fit)


def open_image(data: bytes, label: str = "") -> Image.Image:
    """Open and fully decode encoded bytes with Pillow, EXIF orientation applied."""
    if not data:
        raise BadImage(label, "empty file")
    try:
        img = Image.open(io.BytesIO(data))  # the header only: a bomb is refused before decoding
        img.load()
        # No orientation to apply without EXIF (a PNG or GIF usually): exif_transpose would parse it
        # anyway, ~15 us of cnn serve's one-image requests.
        return ImageOps.exif_transpose(img) if img.info.get("exif") or img.format in ("JPEG", "TIFF", "WEBP",
                                                                                        "MPO") else img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(label, "too many pixels (decompression bomb)") from None
    except UnidentifiedImageError:
        raise BadImage(label, f"not an image ({sniff(data)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = "truncated" if "truncated" in str(e).lower() else f"corrupt ({str(e).splitlines()[0][:60]})"
        raise BadImage(label, reason) from None


FITS = ("squash", "crop")


def to_array(img: Image.Image, size: tuple[int, int] | None, mode: str, label: str = "", fit: str = "squash"
             ) -> np.ndarray:
    """Convert a decoded Pillow image to `mode`, resize to (H, W) with BILINEAR (`fit` as in
    `decode_image`), return uint8 HWC."""
    try:
        img = _flatten(img)
        if img.mode != mode:
            with warnings.catch_warnings():
                # "Palette images with transparency ... should be converted to RGBA": harmless here.
                warnings.simplefilter("ignore", UserWarning)
                img = img.convert(mode)
        if size is not None and fit == "crop":
            img = _cover_crop(img, size)
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise BadImage(label, f"corrupt ({str(e).splitlines()[0][:60]})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _cover_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` resized (aspect ratio kept) to the smallest size covering (H, W), then its centre (H, W)."""
    h, w = size
    scale = max(h / img.height, w / img.width)
    cover = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
    if cover != img.size:
        img = img.resize(cover, Image.BILINEAR)
    left, top = (cover[0] - w) // 2, (cover[1] - h) // 2
    return img.crop((left, top, left + w, top + h))


def _flatten(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit greyscale to 8 bits and composite transparency onto white.

    Pillow's own convert("L") clips 16-bit values at 255 (a photo turns white), and dropping alpha
    turns a transparent background black (a drawn digit vanishes); white is what such images show on.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "I" or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img


def resize_array(x: np.ndarray, size: tuple[int, int] | None, fit: str = "squash") -> np.ndarray:
    """Resize one uint8 HWC array exactly as `decode_image` resizes a decoded file."""
    if size is None or x.shape[:2] == tuple(size):
        return x
    mode = "L" if x.shape[-1] == 1 else "RGB"
    img = Image.fromarray(x[..., 0] if mode == "L" else x, mode)
    return to_array(img, size, mode, "", fit)


def check_named_format(name: str, data: bytes) -> str | None:
    """A reason to skip a data set file whose bytes are not what its name says, else None.

    A .jpg that holds HTML or a PNG is skipped rather than trusted: in scraped photo sets
    such files are error pages and placeholders, not photos of the class.
    """
    if not data:
        return "empty file"
    ext = os.path.splitext(name)[1].lower()  # not pathlib: this runs once per file of 60,000
    if ext in JPEG_EXTS and not data.startswith(b"\xff\xd8\xff"):
        return f"named {ext} but is {sniff(data)}"
    return None


def sniff(data: bytes) -> str:
    """Name the format of encoded bytes from their first bytes (for skip reasons)."""
    head = data[:64]
    if not head:
        return "empty"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if text.startswith(b"<"):
        return "markup"
    return "unknown data"


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _read(path_or_bytes) -> tuple[str, bytes]:
    """(label for messages, bytes) of a path or of bytes already in memory."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return "", bytes(path_or_bytes)
    path = Path(os.fspath(path_or_bytes))
    try:
        return str(path), path.read_bytes()
    except FileNotFoundError:
        raise CnnError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CnnError(f"{path}: is a folder, not an image") from None
    except OSError as e:
        raise CnnError(f"{path}: cannot read ({e.strerror})") from None


def _hw(size) -> tuple[int, int] | None:
    """Normalise a size argument to (H, W)."""
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise CnnError(f"image size must be positive, not {size}")
    return h, w
