"""The export formats, one table: `cnn export --format`'s choices, the file each writes, which
function of `export.py` writes it and which of `exported.py` opens it, and what it can hold. Standard library only:
the command line reads the choices from here without importing NumPy or a converter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Format:
    suffix: str  # appended to the checkpoint's name: best.onnx, best_savedmodel (no dot: a directory)
    needs: str | None  # the module the converter needs, from the `export` extra (None: JAX alone)
    inline_meta: bool  # metadata inside the file (else the JSON beside it)
    bf16: bool  # the runtime runs bfloat16 convolutions (onnxruntime's and TFLite's CPU kernels do not)
    writer: str  # export.py's function writing it: (fn, input spec, path, metadata)
    loader: str  # exported.py's function opening it: path -> (metadata, call)


FORMATS = {
    "onnx": Format(".onnx", "jax2onnx", True, False, "_onnx", "_load_onnx"),
    "stablehlo": Format(".stablehlo", None, False, True, "_stablehlo", "_load_stablehlo"),
    "savedmodel": Format("_savedmodel", "tensorflow", False, True, "_savedmodel", "_load_savedmodel"),
    "tflite": Format(".tflite", "tensorflow", False, False, "_tflite", "_load_tflite"),
}
NAMES = tuple(FORMATS)


def of_path(path: Path) -> str | None:
    """The format of an export on disk (a directory is the one format written as one), or None."""
    for name, f in FORMATS.items():
        if path.is_dir() if not f.suffix.startswith(".") else path.suffix == f.suffix:
            return name
    return None


def described() -> str:
    """`.onnx, .stablehlo, .tflite or a SavedModel directory`, for messages."""
    files = [f.suffix for f in FORMATS.values() if f.suffix.startswith(".")]
    dirs = [n for n, f in FORMATS.items() if not f.suffix.startswith(".")]
    return ", ".join(files) + "".join(f" or a {d} directory" for d in dirs)
