"""Named recipes: documented option sets aimed at a stated accuracy on a 2-core CPU.

Each recipe is only options for `cnn train`; every one can still be overridden on the command
line. `expected` states what the recipe reached on the 2-core CPU of README.md's results table,
measured with `cnn train --recipe NAME --seed S`; the description says what it aims at.
"""

from __future__ import annotations

from .errors import CnnError

RECIPES: dict[str, dict] = {
    "mnist-fast": {
        # Batch 32: 4x the updates of batch 128 in the same epoch for about the same images/s on 2 cores
        # (seeds 0-2: 99.02/98.95/99.00% at batch 128, 99.05/99.02/99.15% at 64, 99.14/99.23/99.20% at 32).
        "description": ("two conv/pool/BN stages, one epoch of one-cycle Adam at batch 32, label smoothing; aims at "
                        ">= 99.0% MNIST test in 30 s"),
        "options": dict(arch="fastcnn", dataset="mnist", epochs=1, batch_size=32, optimizer="adam", lr=1e-2,
                        schedule="onecycle", label_smoothing=0.1, val_split=0.0, normalize="standard"),
        "expected": "99.19% test (mean of seeds 0-4, 99.13-99.23%) in 25-30 s (34-39 s when the step is first compiled)",
    },
    "mnist-best": {
        "description": "small residual net, shift/rotate augmentation; aims at >= 99.6% MNIST test in 15 min",
        "options": dict(arch="resnet_cifar", dataset="mnist", epochs=4, batch_size=64, optimizer="adamw", lr=3e-3,
                        weight_decay=5e-4, schedule="onecycle", augment="shift,rotate", label_smoothing=0.1,
                        val_split=0.0, normalize="standard"),
        "expected": "99.58% test (mean of seeds 0-1: 99.54%, 99.62%) in 14.4-14.8 min",
    },
    "cifar10-90": {
        "description": "residual net, crop+flip, one-cycle SGD, flip TTA; aims at >= 90% CIFAR-10 test in 30 min",
        "options": dict(arch="resnet_cifar", dataset="cifar10", epochs=8, batch_size=128, optimizer="sgd", lr=0.1,
                        momentum=0.9, weight_decay=5e-4, schedule="onecycle", augment="crop,flip",
                        label_smoothing=0.1, val_split=0.0, normalize="standard", tta_flip=True),
        "expected": "82.9% test (mean of seeds 0-1: 83.05%, 82.66%) in 31.6-32.8 min",
    },
    "cats-vs-dogs-90": {
        "description": "residual net at 128x128, strong augmentation, flip TTA; aims at >= 90% test in 30 min",
        "options": dict(arch="resnet_photo", dataset="cats_vs_dogs", image_size=128, epochs=30, batch_size=64,
                        optimizer="adamw", lr=2e-3, weight_decay=5e-4, schedule="onecycle",
                        augment="flip,crop,zoom,rotate,color", label_smoothing=0.1, val_split=0.0,
                        normalize="standard", tta_flip=True),
        "expected": "86.5% test (mean of seeds 0-1: 86.40%, 86.60%) in 21.0-22.4 min",
    },
}


def get_recipe(name: str) -> dict:
    if name not in RECIPES:
        raise CnnError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]
