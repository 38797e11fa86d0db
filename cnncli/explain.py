"""Saliency maps (seed 002, "Saliency Maps dψ/dh"): which pixels the predicted class score is most sensitive to.

The score is the predicted class's logit (for a one-unit binary head, the logit of the predicted
side: z for class 1, -z for class 0); its gradient with respect to the input pixels comes from
`jax.grad`, and the map is max |gradient| over the colour channels (Simonyan et al. 2014).
The plain model is explained: test-time flipping, if the run uses it, is not part of the score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CnnError


def saliency_map(run, x_uint8: np.ndarray) -> tuple[np.ndarray, int, float]:
    """(saliency (H, W) float32, predicted class index, its probability) for one uint8 HWC image."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from .train.augment import normalize, to_unit

    graphdef, state = nnx.split(run.model)

    def score(state, u):  # u: pixels in [0, 1], the scale the gradient is taken in
        z = nnx.merge(graphdef, state)(normalize(u, run.mean, run.std))[0]
        if run.binary_head:  # one logit z for class 1; class 0's logit is -z
            cls = (z[0] > 0).astype(jnp.int32)
            return jnp.where(cls == 1, z[0], -z[0]), (cls, jax.nn.sigmoid(jnp.abs(z[0])))
        cls = jnp.argmax(z)  # piecewise constant: the gradient flows through z[cls] only
        return z[cls], (cls, jax.nn.softmax(z)[cls])

    # The weights are an argument, not closed over: constants that big would be folded into the compiled code.
    grad_fn = jax.jit(jax.grad(score, argnums=1, has_aux=True))
    grad, (cls, prob) = grad_fn(state, to_unit(jnp.asarray(x_uint8)[None]))
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
    from .predict import prepare

    image = Path(image)
    png = output_path(image, run.dir, out)
    prep = prepare(image, run, invert)
    sal, cls, prob = saliency_map(run, prep.x)
    name = run.classes[cls]
    plots.saliency(prep.x, sal, png, f"{image.name}: predicted {name} ({prob:.3f})")
    return {"file": str(image), "class": name, "probability": prob, "png": str(png), "note": ", ".join(prep.notes)}
