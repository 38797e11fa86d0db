"""Saliency maps (seed 002, "Saliency Maps dψ/dh"): which pixels the predicted class score is most sensitive to.

The score is the predicted class's logit (for a one-unit binary head, the logit of the predicted
side: z for class 1, -z for class 0); its gradient with respect to the input pixels comes from
`jax.grad`, and the map is max |gradient| over the colour channels (Simonyan et al. 2014).
The plain model is explained: test-time flipping, if the run uses it, is not part of the score.
The class and probability printed are `cnn predict`'s (its test-time views and the run's calibration
temperature, through the same code), so the two commands never disagree on one image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CnnError


def saliency_map(run, x_uint8: np.ndarray, cls: int | None = None) -> tuple[np.ndarray, int, float]:
    """(saliency (H, W) float32, class index, the plain model's uncalibrated probability of it) for one
    uint8 HWC image; the class is `cls`, else the plain model's prediction."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from .runs.infer import normalize, to_unit

    graphdef, state = nnx.split(run.model)

    def score(state, u, wanted):  # u: pixels in [0, 1], the scale the gradient is taken in; wanted -1: argmax
        z = nnx.merge(graphdef, state)(normalize(u, run.mean, run.std))[0]
        if run.binary_head:  # one logit z for class 1; class 0's logit is -z
            c = jnp.where(wanted >= 0, wanted, (z[0] > 0).astype(jnp.int32))
            side = jnp.where(c == 1, z[0], -z[0])
            return side, (c, jax.nn.sigmoid(side))
        c = jnp.where(wanted >= 0, wanted, jnp.argmax(z))  # piecewise constant: the gradient flows through z[c] only
        return z[c], (c, jax.nn.softmax(z)[c])

    # The weights are an argument, not closed over: constants that big would be folded into the compiled code.
    grad_fn = jax.jit(jax.grad(score, argnums=1, has_aux=True))
    grad, (cls, prob) = grad_fn(state, to_unit(jnp.asarray(x_uint8)[None]), jnp.int32(-1 if cls is None else cls))
    return np.asarray(jnp.abs(grad[0]).max(-1), np.float32), int(cls), float(prob)


def output_path(image: Path, run_dir: Path, out: str | None) -> Path:
    """Where the figure goes: `--out` (a file whose extension names the format, or a folder to put a PNG in)
    or <run_dir>/explain/<stem>_saliency.png."""
    from .plots import figure_format

    name = f"{image.stem}_saliency.png"
    path = Path(out) if out else Path(run_dir) / "explain" / name
    if path.is_dir() or (out and out.endswith(("/", "\\"))):
        path = path / name
    if path.resolve() == image.resolve():
        raise CnnError(f"--out {path} is the input image; refusing to overwrite it")
    try:
        figure_format(path)  # refused before any work: --out x.gif would otherwise get PNG bytes
    except CnnError as e:
        raise CnnError(f"--out {e}") from None
    return path


def explain(run, image, out: str | None = None, invert: str = "auto") -> dict:
    """Compute and draw the saliency map of `image`; returns {file, class, probability, png, note}."""
    from . import plots
    from .data import decode_image
    from .predict import calibrated, prepare, result

    image = Path(image)
    png = output_path(image, run.dir, out)
    prep = prepare(image, run, invert)
    # What `cnn predict` answers for this image (views, temperature, unsure note), then why.
    said = result(run, image, calibrated(run, run.probabilities(prep.x[None]))[0], prep.notes, top_k=1)
    name, prob = said["class"], said["probability"]
    sal, _, _ = saliency_map(run, prep.x, run.classes.index(name))
    # The picture shows the file as the user made it (colours, strokes, size), the map laid back onto it.
    rgb = decode_image(image, None, "RGB")
    shown = _shown(rgb)
    on_file = onto_file(smooth(sal), prep.frame, rgb.shape[:2], shown.shape[:2])
    plots.saliency(shown, on_file, prep.x, png, f"{image.name}: predicted {name} ({prob:.3f})")
    return {"file": str(image), "class": name, "probability": prob, "unsure": said["unsure"], "png": str(png),
            "note": said["note"]}


SHOWN_SIDE = 448  # the file is drawn at most this many pixels a side (a 12 MP photo need not be)


def _shown(rgb: np.ndarray) -> np.ndarray:
    from .data.images import resize_array

    h, w = rgb.shape[:2]
    s = min(1.0, SHOWN_SIDE / max(h, w))
    return rgb if s == 1.0 else resize_array(rgb, (max(1, round(h * s)), max(1, round(w * s))))


def smooth(sal: np.ndarray) -> np.ndarray:
    """A 3x3 binomial blur: raw gradients flicker pixel to pixel; the map should show regions."""
    k = np.array([0.25, 0.5, 0.25])
    p = np.pad(sal, 1, mode="edge")
    rows = k[0] * p[:-2] + k[1] * p[1:-1] + k[2] * p[2:]
    return (k[0] * rows[:, :-2] + k[1] * rows[:, 1:-1] + k[2] * rows[:, 2:]).astype(np.float32)


def onto_file(sal: np.ndarray, frame, file_hw, shown_hw) -> np.ndarray:
    """The model-input saliency (h, w) laid onto the file's pixels, as drawn at `shown_hw`.

    `frame` (see `predict.Prepared`) says which input rows/cols hold which part of the file; None:
    the whole file was resized to the input. Saliency outside that part (the margin a centred digit
    was placed in) has no pixel of the file to land on.
    """
    from PIL import Image

    h, w = sal.shape
    top, left, ph, pw, y0, x0, y1, x1 = frame or (0, 0, h, w, 0, 0, *file_hw)
    sy, sx = shown_hw[0] / file_hw[0], shown_hw[1] / file_hw[1]
    y0, y1 = round(y0 * sy), max(round(y1 * sy), round(y0 * sy) + 1)
    x0, x1 = round(x0 * sx), max(round(x1 * sx), round(x0 * sx) + 1)
    out = np.zeros(shown_hw, np.float32)
    patch = sal[top : top + ph, left : left + pw].astype(np.float32)
    up = np.asarray(Image.fromarray(patch, "F").resize((x1 - x0, y1 - y0), Image.BILINEAR))
    out[y0:y1, x0:x1] = up[: shown_hw[0] - y0, : shown_hw[1] - x0]
    return out
