"""Run directories: the unit every command reads. `config.json` alone rebuilds model and preprocessing.

runs/train/<name>/  config.json  history.csv  metrics.json  curves.png  checkpoints/{last,best}.msgpack
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from .. import locks
from ..checks import check_name, check_out
from ..errors import CnnError
from ..fsutil import write_text
from ..locks import Lock

CHECKPOINTS = ("best", "last")  # checkpoints/<name>.msgpack of every run

HISTORY_FIELDS = [
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "lr", "seconds", "elapsed_seconds", "images_per_s",
]


def new_run_dir(out: str, name: str) -> Path:
    """`out/name`, or `out/name-2`, `-3`, ... if taken (Ultralytics' auto-numbering)."""
    check_name(name)
    check_out(out)
    base = Path(out)
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        d = base / (name if i == 1 else f"{name}-{i}")
        try:
            d.mkdir()  # atomic claim: two runs started together never share a directory
            return d
        except FileExistsError:
            continue
    raise CnnError(f"too many runs named {name!r} in {base}")


def claim(run_dir: Path) -> Lock:
    """Lock an existing run directory for writing, then remove what a killed writer left behind
    (the temporary files of atomic writes that never reached their rename)."""
    lock = locks.acquire(run_dir, "a training run")
    for tmp in Path(run_dir).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return lock


def write_history(run_dir: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in HISTORY_FIELDS})
    write_text(run_dir / "history.csv", buf.getvalue())


def read_history(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "history.csv"
    if not p.is_file():
        return []
    with open(p) as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def read_config(run_dir: Path) -> dict:
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise CnnError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise CnnError(f"{p} is not valid JSON") from None


def checkpoint_used(run_dir: Path, which: str) -> tuple[str, int | None]:
    """Which checkpoint `load_run` loaded (it falls back on `last`) and the epoch it holds."""
    used = which if (run_dir / "checkpoints" / f"{which}.msgpack").is_file() else "last"
    if used == "best":
        p = run_dir / "metrics.json"
        if p.is_file():
            return used, json.loads(p.read_text()).get("best_epoch")
        return used, None
    hist = read_history(run_dir)
    return used, int(hist[-1]["epoch"]) if hist else None


def latest_run(out: str = "runs/train") -> Path:
    """The most recently modified run directory that has a checkpoint."""
    base = Path(out)
    runs = [d for d in base.glob("*") if (d / "config.json").is_file() and (d / "checkpoints").is_dir()] if base.is_dir() else []
    if not runs:
        raise CnnError(f"no trained run in {base}/; train one with `cnn train` or pass a run directory")
    return max(runs, key=lambda d: (d / "config.json").stat().st_mtime)


@dataclass
class Run:
    """A trained model ready to use: eval mode, weights loaded, with its preprocessing."""

    dir: Path
    config: dict
    model: object
    classes: list[str]
    input_shape: tuple[int, int, int]
    binary_head: bool
    mean: tuple
    std: tuple
    tta_flip: bool = False  # predictions average the image and its mirror, as training's evaluation did
    tta_shift: int = 0  # and copies shifted by +-N px, as training's evaluation did
    tta_scales: tuple = ()  # and views at these shares of the side, as training's evaluation did
    calibration: dict | None = None  # calibration.json (temperature, unsure threshold); None: none written
    precision: str = "auto"  # of inference: fp32, bf16, or auto (bf16 where this CPU runs it faster)
    fit: str = "squash"  # how a photo meets the input size (data.images.decode_image): squash or crop

    def preprocess(self, x_uint8):
        """uint8 NHWC -> the float batch the model was trained on."""
        from .augment import normalize, to_unit

        return normalize(to_unit(x_uint8), self.mean, self.std)

    def probabilities(self, x_uint8, batch_size: int = 256, progress=None):
        """Class probabilities (N, K) for uint8 images, in jitted batches of fixed size; `progress(n)`
        is called after each batch with the number of images it held."""
        import numpy as np

        from .step import make_eval_step, split

        n = len(x_uint8)
        if not hasattr(self, "_eval"):
            _, geval, params, rest = split(self.model)
            self.model.eval()
            self._state = (params, rest)

            def step(precision):
                return make_eval_step(geval, binary=self.binary_head, mean=self.mean, std=self.std, tta_flip=self.tta_flip,
                                      tta_shift=self.tta_shift, tta_scales=self.tta_scales, precision=precision)

            self.precision, self.precision_note = _inference_precision(self.precision, step, self._state,
                                                                       (min(batch_size, max(n, 1)), *self.input_shape))
            self._eval = step(self.precision)
        out = []
        for i in range(0, n, batch_size):
            xb = np.asarray(x_uint8[i : i + batch_size])
            m = len(xb)
            bs = min(batch_size, max(n, 1))
            if m < bs:  # pad to one shape so the step compiles once
                xb = np.concatenate([xb, np.zeros((bs - m, *xb.shape[1:]), xb.dtype)])
            _, _, probs = self._eval(*self._state, xb, np.zeros(len(xb), np.int32), np.zeros(len(xb), np.float32))
            out.append(np.asarray(probs)[:m])
            if progress is not None:
                progress(m)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def _inference_precision(requested, step, state, batch_shape) -> tuple[str, str]:
    """`precision.resolve` for an eval step: fp32 and bf16 steps timed on a zero batch of the real shape."""
    import jax
    import numpy as np

    from ..precision import resolve

    if requested != "auto":
        return resolve(requested, (), {}, None)
    n = batch_shape[0]
    inputs = lambda: (*state, np.zeros(batch_shape, np.uint8), np.zeros(n, np.int32), np.ones(n, np.float32))  # noqa: E731
    key = ("eval", tuple(batch_shape), tuple((tuple(a.shape), a.dtype.name) for a in jax.tree.leaves(state)))
    return resolve("auto", key, {"fp32": step("fp32"), "bf16": step("bf16")}, inputs)


def load_run(run_dir, which: str = "best") -> Run:
    """Rebuild the model from `config.json` and load `checkpoints/<which>` (falls back to `last`)."""
    from ..runtime import setup_jax

    setup_jax()  # the compilation cache: evaluate, predict, serve... compiled every program afresh
    from .. import calibrate
    from ..models import abstract_model, get_arch
    from . import checkpoint
    from .config import scale_list, seed_value
    from .step import split

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnError(f"run directory {run_dir} does not exist")
    cfg = read_config(run_dir)
    ckpt = run_dir / "checkpoints" / f"{which}.msgpack"
    if not ckpt.is_file():
        ckpt = run_dir / "checkpoints" / "last.msgpack"
    meta, arrays = checkpoint.load(ckpt)
    data = cfg["data"]
    from flax import nnx

    # Shapes only (no initialisers run, nothing compiled): the checkpoint provides every value.
    model = abstract_model(cfg["arch"], tuple(data["input_shape"]), len(data["classes"]),
                           activation=cfg.get("activation"), dropout=cfg.get("dropout"), seed=seed_value(cfg.get("seed", 0)))
    graphdef, _, params, rest = split(model)
    key = "ema" if meta.get("use_ema") else "params"
    params = checkpoint.unflatten_into(params, _sub(arrays, key), f"{ckpt}")
    rest = checkpoint.unflatten_into(rest, _sub(arrays, "rest"), f"{ckpt}")
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return Run(run_dir, cfg, model, list(data["classes"]), tuple(data["input_shape"]),
               get_arch(cfg["arch"]).binary_head and len(data["classes"]) == 2,
               tuple(data["mean"]), tuple(data["std"]), bool(cfg.get("tta_flip")),
               int(cfg.get("tta_shift") or 0), scale_list(cfg.get("tta_scales")), calibrate.read(run_dir),
               fit=cfg.get("fit", "squash"))


def _sub(arrays: dict, prefix: str) -> dict:
    """The entries under `prefix/` of a flat checkpoint, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p):]: v for k, v in arrays.items() if k.startswith(p)}


def pretrained_run(spec, weights_file: str | None = None) -> Run:
    """A pretrained network as published, with its own classes and no training: `cnn predict --model imagenet`."""
    from .. import calibrate
    from ..host import cache_root
    from ..pretrained import network
    from ..runtime import setup_jax

    setup_jax()
    model = network(spec, weights_file)
    model.eval()
    shape = (spec.image_size, spec.image_size, 3)
    classes = spec.classes()
    cfg = {"arch": spec.arch, "pretrained": spec.name,
           "data": {"name": spec.name, "classes": classes, "input_shape": list(shape)}}
    note = f"{spec.arch} with its {spec.name} weights as published: probabilities not recalibrated"
    return Run(cache_root() / "pretrained", cfg, model, classes, shape, False, spec.mean, spec.std,
               calibration=dict(calibrate.NO_VAL, note=note), fit=spec.fit)
