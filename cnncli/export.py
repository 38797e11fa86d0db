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
the run's on a probe batch (`check`) through exported.py's `load_export`, the loader `cnn predict
--model` and `cnn serve` use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .checks import EXPORT_PRECISIONS, choice
from .errors import CnnError
from .formats import FORMATS
from .exported import (EXTRA_HINT, FORMAT_VERSION, INPUT, META_KEY, OUTPUT, tensorflow_module, load_export, meta_path,
                       quiet_stderr)
from .fsutil import atomic_path, write_json

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
    tf = tensorflow_module()
    from jax.experimental import jax2tf

    h, w, c = spec.shape[1:]
    converted = jax2tf.convert(fn, polymorphic_shapes=[f"(batch, {h}, {w}, {c})"], with_gradient=False)
    sig = tf.TensorSpec([None, h, w, c], tf.uint8, name=INPUT)
    return tf.function(lambda images: {OUTPUT: converted(images)}, input_signature=[sig], autograph=False)


def _save_tf(fn, spec, directory: Path) -> None:
    tf = tensorflow_module()
    from .models.layers import reference_ops

    module = tf.Module()
    with reference_ops():
        module.predict = _tf_function(fn, spec)
        tf.saved_model.save(module, str(directory), signatures={"serving_default": module.predict})


def _savedmodel(fn, spec, path: Path, meta: dict) -> None:
    with _atomic_dir(path) as tmp:
        _save_tf(fn, spec, tmp)


def _tflite(fn, spec, path: Path, meta: dict) -> None:
    tf = tensorflow_module()
    from .fsutil import write_bytes

    with tempfile.TemporaryDirectory() as d:
        _save_tf(fn, spec, Path(d))
        with quiet_stderr():
            flat = tf.lite.TFLiteConverter.from_saved_model(d).convert()
    write_bytes(path, flat)




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


def check(run, path: Path, tolerance: float = TOLERANCE) -> float:
    """Largest |export - run| probability on a probe batch; raises CnnError beyond `tolerance`."""
    probe = np.random.default_rng(0).integers(0, 256, (PROBE, *run.input_shape), np.uint8)
    from .predict import calibrated

    got = load_export(path).probabilities(probe)
    diff = float(np.abs(got - calibrated(run, run.probabilities(probe))).max())
    if not diff <= tolerance:
        raise CnnError(f"{path}: the export's probabilities differ from the run's by {diff:.2g} (> {tolerance:g})")
    return diff
