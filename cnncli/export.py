"""`cnn export`: a trained run as a file that another runtime loads, without `cnn`'s model code.

One entry point (`export`), one short function per format, the metadata written the same way for
all (as Ultralytics' engine/exporter.py does). Every format holds the same function:

    images  uint8 (N, H, W, C), N dynamic  ->  probabilities float32 (N, K)

with the scaling to [0, 1], the normalisation and the run's test-time views inside, so that the
file alone answers as `cnn predict` does. It is traced under `layers.reference_ops()`: XLA's own
convolution, `reduce_window` pooling and plain products (no custom VJP, loop or barrier), the
forms converters and other runtimes know. A bf16 run exports in fp32 unless asked.

What prediction needs beyond the network (input size and channels, normalisation, the digit
rule, class names, the head, the test-time views, the source run and its accuracy) is one JSON
document, `metadata(run)`: in the file where the format has a place for it (ONNX's
metadata_props), else beside it (`<file>.json`, or `cnn.json` inside a SavedModel directory).

After writing, each export is loaded back in its own runtime and its probabilities compared with
the run's on a probe batch (`check`); `load_export` is that loader, used by `cnn predict --model`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import EXPORT_PRECISIONS, choice
from .errors import CnnError
from .formats import FORMATS, described, of_path
from .fsutil import atomic_path, write_json

FORMAT_VERSION = 1
META_KEY = "cnn"  # the ONNX metadata_props key holding the JSON document
INPUT, OUTPUT = "images", "probabilities"
EXTRA_HINT = "pip install -e '.[export]'"
PRECISIONS = EXPORT_PRECISIONS
TOLERANCE = 1e-4  # the largest difference from the run's probabilities `check` accepts
PROBE = 3  # images in the check's batch: not the traced size, so the dynamic batch is exercised too


def export(run_dir, fmt: str, out=None, checkpoint: str = "best", precision: str = "fp32") -> dict:
    """Write the run in `run_dir` as `fmt`, check it in its runtime; {file, metadata, format, max_abs_diff}."""
    from .runs import CHECKPOINTS, load_run

    # The rules `cnn export` checks its options with, for callers of the library too.
    choice(FORMATS).check("--format", fmt)
    choice(CHECKPOINTS).check("--checkpoint", checkpoint)
    choice(PRECISIONS).check("--precision", precision)
    if precision == "bf16" and not FORMATS[fmt].bf16:
        able = ", ".join(f for f, spec in FORMATS.items() if spec.bf16)
        raise CnnError(f"{fmt}'s CPU runtime has no bfloat16 convolutions: export fp32 (the default), or bf16 as {able}")
    require(fmt)
    run = load_run(run_dir, which=checkpoint)
    # The check compares like with like: the run in the export's precision, not in the one `auto`
    # would time as faster here (bf16 on AMX: ~5e-3 from fp32, fifty times the tolerance).
    run.precision = precision
    path = Path(out) if out else Path(run_dir) / "export" / (run.checkpoint + ("_bf16" if precision == "bf16" else "")
                                                            + FORMATS[fmt].suffix)
    meta = metadata(run, precision)
    meta["format"] = fmt
    write(inference_fn(run, precision), fmt, run.input_shape, path, meta)
    if not FORMATS[fmt].inline_meta:
        write_json(meta_path(path), meta)
    diff = check(run, path, TOLERANCE if precision == "fp32" else 0.05)
    return {"file": str(path), "format": fmt, "metadata": str(path if FORMATS[fmt].inline_meta else meta_path(path)),
            "checkpoint": run.checkpoint, "precision": precision, "max_abs_diff": diff}


def require(fmt: str) -> None:
    """One line naming the extra to install when the converter for `fmt` is missing."""
    import importlib.util

    needs = FORMATS[fmt].needs
    if needs and importlib.util.find_spec(needs) is None:
        raise CnnError(f"{fmt} export needs {needs}: {EXTRA_HINT}")


# --- what every format holds ---------------------------------------------------------------------


def inference_fn(run, precision: str = "fp32"):
    """images uint8 (N, H, W, C) -> probabilities (N, K): the run's prediction as one function, its
    weights inside as constants. Trace it under `layers.reference_ops()` (the writers do)."""
    import jax
    import jax.numpy as jnp

    from .runs.infer import predict_fn

    predict, state = predict_fn(run.model, run.binary_head, run.mean, run.std, run.tta_flip, run.tta_shift,
                                run.tta_scales, run.temperature, jnp.bfloat16 if precision == "bf16" else jnp.float32)
    # Every float array (weights and BatchNorm statistics), so that no layer mixes two precisions.
    state = jax.tree.map(lambda a: a.astype(predict.dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return lambda images: predict(state, images)


def write(fn, fmt: str, input_shape, path: Path, meta: dict | None = None) -> None:
    """Convert `fn` (uint8 images -> probabilities) to `fmt` at `path` with `meta` (the format's writer)."""
    with quiet_stderr():  # TensorFlow's CUDA probe line, while it traces on a CPU-only build
        globals()[FORMATS[fmt].writer](fn, input_spec(input_shape), Path(path), meta or {})


def input_spec(input_shape):
    """The input's abstract value: uint8 NHWC with a symbolic batch dimension."""
    import jax
    import jax.numpy as jnp

    h, w, c = input_shape
    return jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"batch, {h}, {w}, {c}"), jnp.uint8)


def metadata(run, precision: str = "fp32") -> dict:
    """Everything prediction needs beyond the network, and where the model came from (JSON-ready)."""
    from . import __version__
    from .predict import digit_box

    h, w, c = run.input_shape
    metrics_file = Path(run.dir) / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    box = digit_box(run)
    return {
        "format_version": FORMAT_VERSION,
        "cnn_version": __version__,
        "input": {"name": INPUT, "dtype": "uint8", "layout": "NHWC", "shape": [None, h, w, c], "channels": c,
                  "color": "L" if c == 1 else "RGB",
                  "resize": "bilinear to H x W" + (", aspect kept: the centre cut out" if getattr(run, "fit", "squash")
                                                   == "crop" else ""), "fit": getattr(run, "fit", "squash")},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": [None, len(run.classes)]},
        "classes": list(run.classes),
        "binary_head": bool(run.binary_head),  # one sigmoid unit: probabilities are [1 - p, p]
        "normalization": {"scale": "x / 255", "mean": list(run.mean), "std": list(run.std), "in_graph": True},
        "digits": None if box is None else {
            "box": box, "invert": "auto: a digit photo whose border is light (dark ink on paper) is inverted",
            "centre": "ink cropped, its longer side scaled to box x the frame, placed by centre of mass"},
        "test_time_views": {"flip": bool(run.tta_flip), "shift": int(run.tta_shift),
                            "scales": [float(s) for s in run.tta_scales], "in_graph": True},
        # The temperature is applied in the graph; the unsure rule is the caller's (calibrate.is_unsure).
        "calibration": None if run.calibration is None else {**run.calibration, "in_graph": True},
        "precision": precision,
        "source": {"run_dir": str(Path(run.dir).resolve()), "arch": run.config.get("arch"),
                   "dataset": run.config.get("dataset"), "data": run.config.get("data", {}).get("name"),
                   "checkpoint": run.checkpoint, "epoch": run.epoch, "trained_precision": run.config.get("precision", "fp32"),
                   "test_accuracy": metrics.get("test_accuracy"), "val_accuracy": metrics.get("best_val_accuracy")},
    }


def meta_path(path: Path) -> Path:
    """Where the JSON goes for formats without a metadata slot: inside a directory, else beside the file."""
    path = Path(path)
    return path / "cnn.json" if path.is_dir() else path.with_name(path.name + ".json")


# --- one writer per format -----------------------------------------------------------------------


def _jax2onnx_plugins() -> None:
    """Load jax2onnx's JAX and Flax plugins only. On first use it imports every plugin module, and
    its Equinox ones build and compile some 70 example modules at import: 20-30 s of a 35 s export
    of a small net here. A jax2onnx without this internal layout keeps its own behaviour."""
    from jax2onnx.plugins import plugin_system as ps

    if getattr(ps, "_already_imported_plugins", True) or not hasattr(ps, "_import_tree"):
        return
    root = Path(ps.__file__).parent
    for sub in ("jax", "flax"):
        ps._import_tree(root / sub, f"jax2onnx.plugins.{sub}")
    ps._already_imported_plugins = True


def _onnx(fn, spec, path: Path, meta: dict) -> None:
    import onnx
    from jax2onnx import to_onnx

    from .models.layers import reference_ops

    _jax2onnx_plugins()
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # "value type ... not known" for shape constants
    with reference_ops():
        proto = to_onnx(fn, [spec], model_name="cnn", input_names=[INPUT], output_names=[OUTPUT])
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def _stablehlo(fn, spec, path: Path, meta: dict) -> None:
    import jax

    from .fsutil import write_bytes
    from .models.layers import reference_ops

    with reference_ops():
        exported = jax.export.export(jax.jit(fn))(spec)
    write_bytes(path, exported.serialize())


def _tf_function(fn, spec):
    """A tf.function of `fn` through jax2tf, the batch left dynamic, its output named."""
    tf = _tensorflow()
    from jax.experimental import jax2tf

    h, w, c = spec.shape[1:]
    converted = jax2tf.convert(fn, polymorphic_shapes=[f"(batch, {h}, {w}, {c})"], with_gradient=False)
    sig = tf.TensorSpec([None, h, w, c], tf.uint8, name=INPUT)
    return tf.function(lambda images: {OUTPUT: converted(images)}, input_signature=[sig], autograph=False)


def _save_tf(fn, spec, directory: Path) -> None:
    tf = _tensorflow()
    from .models.layers import reference_ops

    module = tf.Module()
    with reference_ops():
        module.predict = _tf_function(fn, spec)
        tf.saved_model.save(module, str(directory), signatures={"serving_default": module.predict})


def _savedmodel(fn, spec, path: Path, meta: dict) -> None:
    with _atomic_dir(path) as tmp:
        _save_tf(fn, spec, tmp)


def _tflite(fn, spec, path: Path, meta: dict) -> None:
    tf = _tensorflow()
    from .fsutil import write_bytes

    with tempfile.TemporaryDirectory() as d:
        _save_tf(fn, spec, Path(d))
        with quiet_stderr():
            flat = tf.lite.TFLiteConverter.from_saved_model(d).convert()
    write_bytes(path, flat)




def _tensorflow():
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


class _atomic_dir:
    """A temporary directory beside `path` that replaces it on success (the old one kept until then)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        return self.tmp

    def __exit__(self, kind, *_):
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


# --- loading an export back ----------------------------------------------------------------------


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
    tf = _tensorflow()
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

        _tensorflow()
        from tensorflow.lite.python.interpreter import Interpreter

        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    return Interpreter(model_path=str(path))




def check(run, path: Path, tolerance: float = TOLERANCE) -> float:
    """Largest |export - run| probability on a probe batch; raises CnnError beyond `tolerance`."""
    probe = np.random.default_rng(0).integers(0, 256, (PROBE, *run.input_shape), np.uint8)
    from .predict import calibrated

    got = load_export(path).probabilities(probe)
    diff = float(np.abs(got - calibrated(run, run.probabilities(probe))).max())
    if not diff <= tolerance:
        raise CnnError(f"{path}: the export's probabilities differ from the run's by {diff:.2g} (> {tolerance:g})")
    return diff
