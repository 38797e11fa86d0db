"""A trained run loaded for use: its network in eval mode, its preprocessing, its test-time views and
calibration, and its class probabilities for uint8 images (through runs/infer.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CnnError
from . import rundir


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
    checkpoint: str | None = None  # which checkpoint was loaded (best or last); None: not a trained run
    epoch: int | None = None  # the epoch it holds, where recorded

    @property
    def temperature(self) -> float:
        """The calibration temperature (calibrate.py), 1 for a run without one."""
        return float((self.calibration or {}).get("temperature", 1.0))

    def probabilities(self, x_uint8, batch_size: int = 256, progress=None):
        """Class probabilities (N, K) for uint8 images as the network gives them (predict.calibrated
        applies the temperature), in jitted batches of fixed size; `progress(n)` is called after each
        batch with the number of images it held."""
        import numpy as np

        n = len(x_uint8)
        if not hasattr(self, "_eval"):
            self._eval, self._state = self._eval_step((min(batch_size, max(n, 1)), *self.input_shape))
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

    def _eval_step(self, batch_shape):
        """(the jitted eval step in the run's inference precision, its (params, rest)); `auto` is
        decided here by timing both precisions on a zero batch of the real shape."""
        from flax import nnx

        from .infer import make_eval_step

        self.model.eval()
        geval, params, rest = nnx.split(self.model, nnx.Param, ...)
        state = (params, rest)

        def step(precision):
            return make_eval_step(geval, binary=self.binary_head, mean=self.mean, std=self.std, tta_flip=self.tta_flip,
                                  tta_shift=self.tta_shift, tta_scales=self.tta_scales, precision=precision)

        self.precision, self.precision_note = _inference_precision(self.precision, step, state, batch_shape)
        return step(self.precision), state


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
    from flax import nnx

    from .. import calibrate
    from ..checks import scale_list, seed_value
    from ..models import abstract_model, get_arch
    from . import checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnError(f"run directory {run_dir} does not exist")
    cfg = rundir.read_config(run_dir)
    ckpt, used, epoch = rundir.checkpoint_in(run_dir, which)
    meta, arrays = checkpoint.load(ckpt)
    data = cfg["data"]
    # Shapes only (no initialisers run, nothing compiled): the checkpoint provides every value.
    model = abstract_model(cfg["arch"], tuple(data["input_shape"]), len(data["classes"]),
                           activation=cfg.get("activation"), dropout=cfg.get("dropout"), seed=seed_value(cfg.get("seed", 0)))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    key = "ema" if meta.get("use_ema") else "params"
    params = checkpoint.unflatten_into(params, checkpoint.subtree(arrays, key), f"{ckpt}")
    rest = checkpoint.unflatten_into(rest, checkpoint.subtree(arrays, "rest"), f"{ckpt}")
    model = nnx.merge(graphdef, params, rest)
    return Run(run_dir, cfg, model, list(data["classes"]), tuple(data["input_shape"]),
               get_arch(cfg["arch"]).binary_head and len(data["classes"]) == 2,
               tuple(data["mean"]), tuple(data["std"]), bool(cfg.get("tta_flip")),
               int(cfg.get("tta_shift") or 0), scale_list(cfg.get("tta_scales")), calibrate.read(run_dir),
               fit=cfg.get("fit", "squash"), checkpoint=used, epoch=epoch)


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
