"""Figures (matplotlib, Agg backend: no display needed). Every PNG is written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import CnnError  # noqa: E402
from .fsutil import atomic_path  # noqa: E402

# File extension -> the format matplotlib writes: a figure is always in the format its name says.
FIGURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff",
                  ".tiff": "tiff", ".pdf": "pdf", ".svg": "svg"}


def figure_format(path) -> str:
    """The format `path`'s extension names; a CnnError (one line) for any other extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise CnnError(f"{path}: cannot write a figure as {suffix or 'a file without an extension'!r}; "
                       f"name a {', '.join(FIGURE_FORMATS)} file")
    return FIGURE_FORMATS[suffix]


def save(fig, path) -> Path:
    """Write `fig` to `path` atomically, in the format its extension names, and close it."""
    path = Path(path)
    fmt = figure_format(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def curves(history: list[dict], path, title: str = "", best_epoch: int | None = None, schedule=None) -> Path:
    """Accuracy and loss against epoch (train and validation) and the learning rate; the best epoch
    (the checkpoint evaluate and predict use) is marked on each. `schedule` is (epoch positions, rates)
    of the whole schedule; without it the rate recorded at each epoch's end is drawn."""
    fig, (ax_acc, ax_loss, ax_lr) = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    ep = [r["epoch"] for r in history]
    best = next((r for r in history if r["epoch"] == best_epoch), None)
    for ax, key, label in ((ax_acc, "accuracy", "accuracy"), (ax_loss, "loss", "loss")):
        ax.plot(ep, [r[f"train_{key}"] for r in history], "o-", ms=4, label="train")
        has_val = any(r.get(f"val_{key}") is not None for r in history)
        if has_val:
            ax.plot(ep, [r.get(f"val_{key}") for r in history], "s--", ms=4, label="validation")
        if best is not None:
            ax.axvline(best["epoch"], color="grey", ls=":", lw=1.2, label=f"best epoch ({best['epoch']})")
            v = best.get(f"val_{key}") if has_val else best[f"train_{key}"]
            ax.plot([best["epoch"]], [v], "*", color="crimson", ms=14, zorder=5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if schedule is not None:
        ax_lr.plot(schedule[0], schedule[1], "-", color="C2", label="schedule")
    ax_lr.plot(ep, [r["lr"] for r in history], "o", ms=4, color="C2", label="at epoch end")
    if best is not None:
        ax_lr.axvline(best["epoch"], color="grey", ls=":", lw=1.2)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_lr.grid(alpha=0.3)
    ax_lr.legend(fontsize=8)
    for ax in (ax_acc, ax_loss, ax_lr):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_acc.set_title("accuracy")
    ax_loss.set_title("loss")
    if title:
        fig.suptitle(title)
    return save(fig, path)


def confusion_matrices(cm, classes: list[str], path, title: str = "") -> Path:
    """Counts and the row-normalised matrix (each row: how a true class was predicted), side by side."""
    import numpy as np

    cm = np.asarray(cm)
    k = len(classes)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    side = max(4.5, 0.45 * k + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.5, side))
    for ax, m, name, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "normalised by true class", ".2f")):
        im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if m is norm else max(int(m.max()), 1))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=name)
        ax.set_xticklabels(classes, rotation=45 if max(map(len, classes)) > 3 else 0, ha="right")
        ax.set_yticklabels(classes)
        if k <= 20:  # beyond that the numbers are unreadable; the colours still tell
            thresh = (m.max() if m.size else 0) / 2
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=8,
                            color="white" if m[i, j] > thresh else "black")
    if title:
        fig.suptitle(title)
    return save(fig, path)


def image_grid(images: list, labels: list[str], path, title: str = "", cols: int = 5) -> Path:
    """uint8 HWC images in a grid, each with its label below (errors.png)."""
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, label in zip(axes.flat, images, labels):
        gray = img.shape[-1] == 1
        ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255)
        ax.set_title(label, fontsize=8)
    if n == 0:
        axes[0, 0].text(0, 0.5, "no misclassified images", fontsize=12)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def saliency(shown, sal_shown, model_input, path, title: str = "") -> Path:
    """`cnn explain`: the file as the user made it; the same in grey with the saliency as a heat map
    over it (clear where the score does not care); and, small, the input the model saw."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig = plt.figure(figsize=(12, 4.6), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1, 0.55])
    ax_file, ax_heat, ax_input = (fig.add_subplot(grid[0, i]) for i in range(3))
    ax_file.imshow(shown, vmin=0, vmax=255)
    ax_file.set_title("your image")
    grey = shown.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    ax_heat.imshow(grey, cmap="gray", vmin=0, vmax=255)
    # Scaled to the 99th percentile (one hot pixel must not wash the rest out); opacity rises with the
    # value, so where the score does not care the grey image shows through untouched.
    top = float(np.percentile(sal_shown, 99)) or float(sal_shown.max()) or 1.0
    v = np.clip(sal_shown / top, 0, 1)
    rgba = colormaps[HEAT](v)
    rgba[..., 3] = 0.8 * np.clip((v - 0.12) / 0.88, 0, 1) ** 0.6
    ax_heat.imshow(rgba)
    ax_heat.set_title("where the prediction looks")
    fig.colorbar(ScalarMappable(Normalize(0, 1), colormaps[HEAT]), ax=ax_heat, fraction=0.046, pad=0.02,
                 label="saliency, share of the largest")
    gray_in = model_input.shape[-1] == 1
    ax_input.imshow(model_input[..., 0] if gray_in else model_input, cmap="gray" if gray_in else None,
                    vmin=0, vmax=255, interpolation="nearest")
    h, w = model_input.shape[:2]
    ax_input.set_title(f"what the model saw ({w}x{h})", fontsize=9)
    for ax in (ax_file, ax_heat, ax_input):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return save(fig, path)


HEAT = "turbo"  # blue -> red: reads as heat on white paper and on black ink alike


def comparison(panels: dict, path, title: str = "") -> Path:
    """`cnn compare`: per data set (a row), accuracy and loss of every variant on shared axes.

    `panels` is {dataset: {variant: {"epoch": [...], "train_accuracy": [...], "val_accuracy": [...],
    "train_loss": [...], "val_loss": [...], optional "<key>_std": [...]}}}. One colour per variant;
    train solid, validation dashed; a band of ± std over seeds around validation when repeated.
    """
    import numpy as np

    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.2 * len(panels)), squeeze=False, layout="constrained")
    for row, (dataset, curves) in zip(axes, panels.items()):
        for i, (label, c) in enumerate(curves.items()):
            for ax, key in zip(row, ("accuracy", "loss")):
                ax.plot(c["epoch"], c[f"train_{key}"], "-", color=f"C{i}", label=f"{label} train")
                ax.plot(c["epoch"], c[f"val_{key}"], "--", marker="o", ms=3, color=f"C{i}", label=f"{label} val")
                if f"val_{key}_std" in c:
                    m, s = np.asarray(c[f"val_{key}"]), np.asarray(c[f"val_{key}_std"])
                    ax.fill_between(c["epoch"], m - s, m + s, color=f"C{i}", alpha=0.15, linewidth=0)
        for ax, key in zip(row, ("accuracy", "loss")):
            ax.set(xlabel="epoch", ylabel=key, title=f"{dataset}: {key}")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)
