"""Reading an export back: `load_export` opens a file `cnn export` wrote in its own runtime
(onnxruntime, JAX, TensorFlow, LiteRT) with its metadata, as an `Exported` that prediction and the
server use where they would use a `Run`; `load_model` takes an export, a pretrained network's name or a
run directory. What a file holds and where its metadata sits is the contract with export.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CnnError
from .formats import FORMATS, described, of_path

FORMAT_VERSION = 1
META_KEY = "cnn"  # the ONNX metadata_props key holding the JSON document
INPUT, OUTPUT = "images", "probabilities"
EXTRA_HINT = "pip install -e '.[export]'"


def meta_path(path: Path) -> Path:
    """Where the JSON goes for formats without a metadata slot: inside a directory, else beside the file."""
    path = Path(path)
    return path / "cnn.json" if path.is_dir() else path.with_name(path.name + ".json")


@dataclass
class Exported:
    """An export loaded in its own runtime, usable where a `Run` is for prediction (`cnn predict --model`)."""

    path: Path
    format: str
    meta: dict
    _call: object = field(repr=False, default=None)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input"]["shape"][1:])

    @property
    def binary_head(self) -> bool:
        return bool(self.meta["binary_head"])

    @property
    def fit(self) -> str:
        """How a photo meets the input size (predict.prepare): older exports squashed it."""
        return self.meta["input"].get("fit", "squash")

    @property
    def config(self) -> dict:
        """What `predict` reads off a run's config: the digit rule, from the metadata."""
        digits = self.meta.get("digits")
        return {"digit_box": digits["box"] if digits else None, "arch": self.meta["source"].get("arch"),
                "precision": self.meta.get("precision")}

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def calibration(self) -> dict | None:
        """The run's calibration record, its temperature already applied inside the graph."""
        cal = self.meta.get("calibration")
        return None if cal is None else {**cal, "temperature": 1.0}

    def probabilities(self, x_uint8, batch_size: int = 256, progress=None) -> np.ndarray:
        """Class probabilities (N, K) for uint8 images, `batch_size` at a time (calibrated: see `calibration`)."""
        x = np.asarray(x_uint8, np.uint8)
        out = []
        for i in range(0, len(x), batch_size):
            out.append(np.asarray(self._call(x[i : i + batch_size]), np.float32))
            if progress is not None:
                progress(len(out[-1]))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def load_model(path=None, checkpoint: str = "best"):
    """What `predict` and `serve` take: an export (by its name), a pretrained network's name where no file
    has it ("imagenet"), else a run directory (default the newest)."""
    from . import pretrained
    from .runs import latest_run, load_run, pretrained_run

    if path is not None and is_export(path):
        return load_export(path)
    weights = None if path is None or Path(path).exists() else pretrained.find(str(path))
    if weights is not None:
        return pretrained_run(weights)
    return load_run(path or latest_run(), which=checkpoint)


def is_export(path) -> bool:
    """True for a file or directory `load_export` reads (by its name: .onnx, .stablehlo, .tflite, _savedmodel)."""
    p = Path(path)
    return p.suffix in (".onnx", ".stablehlo", ".tflite") or (p.is_dir() and (p / "saved_model.pb").is_file())


def load_export(path) -> Exported:
    """Open an export in its runtime (onnxruntime, JAX, TensorFlow, TFLite) with its metadata."""
    path = Path(path)
    if not path.exists():
        raise CnnError(f"{path} does not exist")
    fmt = of_path(path)
    if fmt is None:
        raise CnnError(f"{path} is not an export ({described()})")
    try:
        meta, call = globals()[FORMATS[fmt].loader](path)
    except CnnError:
        raise
    except ImportError as e:
        raise CnnError(f"{path}: loading a {fmt} export needs {e.name}: {EXTRA_HINT}") from None
    except Exception as e:  # a runtime's own error for a damaged or foreign file
        raise CnnError(f"{path}: cannot load as {fmt} ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    if not meta or meta.get("format_version") != FORMAT_VERSION:
        raise CnnError(f"{path}: no cnn metadata (not written by `cnn export`, or its .json is missing)")
    return Exported(path, fmt, meta, call)


def _sidecar(path: Path) -> dict | None:
    p = meta_path(path)
    return json.loads(p.read_text()) if p.is_file() else None


def _load_onnx(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    meta = json.loads(props[META_KEY]) if META_KEY in props else None
    return meta, lambda x: session.run([OUTPUT], {INPUT: x})[0]


def _load_stablehlo(path: Path):
    import jax

    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    call = jax.jit(exported.call)
    return _sidecar(path), lambda x: _padded(call, x)


def _padded(call, x: np.ndarray, sizes=(1, 8, 32, 128, 256)):
    """`call` on `x` padded to the next of a few batch sizes: each new size compiles once, not each n."""
    n = len(x)
    size = next((s for s in sizes if s >= n), n)
    if size > n:
        x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
    return np.asarray(call(x))[:n]


def _load_savedmodel(path: Path):
    tf = tensorflow_module()
    with quiet_stderr():
        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    return _sidecar(path), lambda x: fn(**{INPUT: tf.constant(x)})[OUTPUT].numpy()


def _load_tflite(path: Path):
    interpreter = _tflite_interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def call(x):
        interpreter.resize_tensor_input(inp["index"], x.shape)
        with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return _sidecar(path), call


def _tflite_interpreter(path: Path):
    """LiteRT's interpreter when installed, else TensorFlow's (the same runtime, deprecated there)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        tensorflow_module()
        from tensorflow.lite.python.interpreter import Interpreter

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    return Interpreter(model_path=str(path))


def tensorflow_module():
    """TensorFlow, imported with the user's own XLA_FLAGS: it aborts on the ones `runtime.tune_xla` adds
    for JAX (which read them at its start, so changing them now leaves JAX as it is)."""
    from .runtime import user_xla_flags

    os.environ["XLA_FLAGS"] = user_xla_flags()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # its C++ start-up chatter is not the user's business
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # TensorFlow only converts here; JAX has its device already
    with quiet_stderr():
        import tensorflow as tf

    return tf


@contextlib.contextmanager
def quiet_stderr():
    """Hold back what C++ libraries write to file descriptor 2 (TensorFlow's start-up and CUDA probe
    lines, which its log level does not silence); it is shown after all if the block fails."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
