"""Options shared by several commands, defined once as `Annotated` types.

A command declares `seed: Seed = 0`; the type carries the option's name, help and checks, the
default stays with the command (a comparison starts at seed 0, training takes the recipe's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JSON_HELP = "Print one JSON object on stdout (human output goes to stderr)."
DATA_DIR_HELP = "Folder with local data set files (default: $CNN_DATA_DIR)."
DATASET_HELP = "mnist, cifar10, cats_vs_dogs, digits or an image folder."
MODEL_HELP = "Run directory of the model (default: the newest under runs/train)."
INVERT_HELP = "Digit models: turn dark-on-light into light-on-dark (auto: when the border is light)."


def _arch_help() -> str:
    # The registry imports no JAX, so listing its names here keeps `cnn --help` instant.
    from ..models.registry import ARCHS

    return "Architecture: " + ", ".join(ARCHS) + "."


Json = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help=DATA_DIR_HELP)]
Dataset = Annotated[str, typer.Option("--dataset", help=DATASET_HELP)]
OptDataset = Annotated[Optional[str], typer.Option("--dataset", help=DATASET_HELP)]
Arch = Annotated[str, typer.Option("--arch", help=_arch_help())]
OptArch = Annotated[Optional[str], typer.Option("--arch", help=_arch_help())]
Seed = Annotated[int, typer.Option("--seed", help="Seed for weights, data order, augmentation and dropout.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Images per step, over all devices.")]
OptBatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="Images per step, over all devices.")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="Passes over the training set.")]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Train on a stratified subset of N images.")]
ValSplit = Annotated[Optional[float], typer.Option("--val-split",
                                                   help="Fraction of train held out for validation (stratified).")]
Model = Annotated[Optional[Path], typer.Option("--model", help=MODEL_HELP)]
Invert = Annotated[str, typer.Option("--invert", help=INVERT_HELP + " yes|no|auto")]
ImageSize = Annotated[Optional[int], typer.Option("--image-size",
                                                  help="Square side images are resized to (default: as training).")]
Activation = Annotated[Optional[str], typer.Option("--activation", help="relu|sigmoid|tanh where the architecture allows.")]
Dropout = Annotated[Optional[float], typer.Option("--dropout", help="Dropout rate where the architecture has dropout.")]
