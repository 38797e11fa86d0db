"""`cnn train`: train an architecture on a data set into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (Activation, DataDir, Dropout, Json, Limit, OptArch, OptBatchSize, OptDataset, ValSplit,
                      Epochs)

Opt = typer.Option


def train(
    arch: OptArch = None,
    dataset: OptDataset = None,
    recipe: Annotated[Optional[str], Opt(help="A named set of options (see `cnn recipes`).")] = None,
    epochs: Epochs = None,
    time_budget: Annotated[Optional[float], Opt(help="Minutes: train the epochs (at most --epochs) that fit, "
                                                "timed on this machine (0 = off).")] = None,
    batch_size: OptBatchSize = None,
    optimizer: Annotated[Optional[str], Opt(help="adam|rmsprop|sgd|adadelta|adagrad|adamw|nadam")] = None,
    lr: Annotated[Optional[float], Opt(help="Peak learning rate (default: the optimizer's Keras default).")] = None,
    momentum: Annotated[Optional[float], Opt(help="SGD momentum (Nesterov).")] = None,
    weight_decay: Annotated[Optional[float], Opt(help="Weight decay on kernels.")] = None,
    decay_biases: Annotated[Optional[bool], Opt("--decay-biases/--no-decay-biases",
                                                help="Weight decay on biases and BatchNorm shifts too.")] = None,
    schedule: Annotated[Optional[str], Opt(help="constant|cosine|onecycle")] = None,
    warmup_epochs: Annotated[Optional[float], Opt(help="Linear warm-up length in epochs.")] = None,
    lr_start: Annotated[Optional[float], Opt(help="onecycle: first learning rate, as a fraction of the peak.")] = None,
    lr_end: Annotated[Optional[float], Opt(help="onecycle/cosine: last learning rate, as a fraction of the peak.")] = None,
    label_smoothing: Annotated[Optional[float], Opt(help="Label smoothing (0 = off).")] = None,
    bn_bias_lr: Annotated[Optional[float], Opt(help="Learning-rate multiplier for BatchNorm shifts.")] = None,
    activation: Activation = None,
    dropout: Dropout = None,
    val_split: ValSplit = None,
    image_size: Annotated[Optional[int], Opt(help="Side in pixels photos are resized to (default 128).")] = None,
    limit: Limit = None,
    balance: Annotated[Optional[bool], Opt("--balance/--no-balance", help="Undersample to the smallest class.")] = None,
    augment: Annotated[Optional[str], Opt(help="none or a list of flip,shift,crop,rrc,rotate,zoom,color (on device); "
                                               "crop:N pads N px (default 4); rrc:S random-resized crops of S to 100% "
                                               "of the area (default 0.25).")] = None,
    normalize: Annotated[Optional[str], Opt(help="unit (x/255) or standard (per-channel mean/std).")] = None,
    early_stopping: Annotated[Optional[int], Opt(help="Stop after N epochs without improvement; restores the best.")] = None,
    monitor: Annotated[Optional[str], Opt(help="val_accuracy or val_loss: what 'best' means.")] = None,
    ema: Annotated[Optional[float], Opt(help="EMA decay of the weights (0 = off).")] = None,
    lookahead: Annotated[Optional[bool], Opt("--lookahead/--no-lookahead",
                                             help="Every 5 steps move the weights to their EMA (airbench's).")] = None,
    tta_flip: Annotated[Optional[bool], Opt("--tta-flip/--no-tta-flip",
                                            help="Average predictions with the mirror image.")] = None,
    tta_shift: Annotated[Optional[int], Opt(help="Also average over copies shifted by +-N pixels (0 = off).")] = None,
    tta_scales: Annotated[Optional[str], Opt(help="Also average over views at these shares of the side: 0.8 = the "
                                                  "central 80% enlarged, 1.25 = shrunk in a border.")] = None,
    seed: Annotated[Optional[int], Opt(help="Seed for weights, data order, augmentation and dropout.")] = None,
    precision: Annotated[Optional[str], Opt(help="fp32 or bf16 (mixed: fp32 master weights).")] = None,
    data_dir: DataDir = None,
    out: Annotated[Optional[str], Opt(help="Parent folder of run directories (default runs/train).")] = None,
    name: Annotated[Optional[str], Opt(help="Run name (default <arch>-<dataset>, auto-numbered).")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue an interrupted run directory.")] = None,
    init_from: Annotated[Optional[str], Opt(help="Start from the weights of another run (transfer learning).")] = None,
    freeze: Annotated[Optional[str], Opt(help="'features': train only the classifier head (with --init-from).")] = None,
    json: Json = False,
):
    """Train an architecture on a data set; writes a run directory with checkpoints and curves."""
    # The training options, read before any other local exists (everything but the command's own switches).
    given = {k: v for k, v in locals().items() if k not in ("json", "resume", "recipe")}
    import os

    from ..console import Out, fmt
    from ..train import TrainConfig, read_config, resolve
    from ..train.progress import Progress

    o = Out(json=json)
    if data_dir is not None:
        given["data_dir"] = str(data_dir)
    elif os.environ.get("CNN_DATA_DIR"):
        given["data_dir"] = os.environ["CNN_DATA_DIR"]
    if resume is not None:
        cfg = TrainConfig.from_dict(read_config(resume))
        if epochs is not None:  # the one option a resumed run may change: train for longer
            cfg.epochs = epochs
    else:
        from ..recipes import get_recipe

        rec = get_recipe(recipe) if recipe else None
        if rec is not None:
            o.print(f"recipe {recipe}: {rec['description']}")
        cfg = resolve(given | {"recipe": recipe}, rec["options"] if rec else None)
        from ..train.optim import DEFAULT_LR

        shown = {k: v for k, v in cfg.to_dict().items() if k not in ("extra",) and v is not None}
        shown.setdefault("lr", f"{DEFAULT_LR[cfg.optimizer]} ({cfg.optimizer} default)")
        o.print("options: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    from ..train import fit

    summary = fit(cfg, Progress(o), resume=resume)
    if json:
        o.emit_json(summary)
    else:
        o.print(f"done in {summary['train_seconds']:.1f}s ({summary['images_per_s']:,.0f} img/s); best epoch "
                f"{summary['best_epoch']}, val accuracy {fmt(summary['best_val_accuracy'])}, "
                f"test accuracy {fmt(summary['test_accuracy'])}")
        o.print(f"run directory: {summary['run_dir']}")
