"""Named recipes: documented option sets that reach a stated accuracy on a 2-core CPU.

Each recipe is only options for `cnn train`; every one can still be overridden on the command
line. `expected` states what the recipe reached here (command, machine, evidence in README.md).
"""

from __future__ import annotations

from .errors import CnnError

RECIPES: dict[str, dict] = {
    "mnist-fast": {
        "description": "MNIST to >= 99.0% test in about 30 s of training",
        "options": dict(arch="workshop", dataset="mnist", epochs=3, batch_size=128, optimizer="adam", lr=3e-3,
                        schedule="onecycle", val_split=0.0),
        "expected": "see README results table",
    },
    "mnist-best": {
        "description": "MNIST to >= 99.6% test within 15 minutes",
        "options": dict(arch="resnet_cifar", dataset="mnist", epochs=12, batch_size=64, optimizer="adamw", lr=3e-3,
                        weight_decay=5e-4, schedule="onecycle", augment="shift,rotate", label_smoothing=0.1,
                        val_split=0.0, normalize="standard"),
        "expected": "see README results table",
    },
    "cifar10-90": {
        "description": "CIFAR-10 to >= 90% test within 30 minutes (residual net, crop+flip, one-cycle, TTA)",
        "options": dict(arch="resnet_cifar", dataset="cifar10", epochs=8, batch_size=128, optimizer="sgd", lr=0.1,
                        momentum=0.9, weight_decay=5e-4, schedule="onecycle", augment="crop,flip",
                        label_smoothing=0.1, val_split=0.0, normalize="standard", tta_flip=True),
        "expected": "see README results table",
    },
    "cats-vs-dogs-90": {
        "description": "cats vs dogs (128x128, 4,000 photos) to >= 90% test within 30 minutes",
        "options": dict(arch="resnet_photo", dataset="cats_vs_dogs", image_size=128, epochs=30, batch_size=64,
                        optimizer="adamw", lr=2e-3, weight_decay=5e-4, schedule="onecycle",
                        augment="flip,crop,zoom,rotate,color", label_smoothing=0.1, val_split=0.0,
                        normalize="standard", tta_flip=True),
        "expected": "see README results table",
    },
}


def get_recipe(name: str) -> dict:
    if name not in RECIPES:
        raise CnnError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]
