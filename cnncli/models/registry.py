"""The architecture registry: the one place to add a network.

Importing this module is cheap (no JAX, no Flax), so `cnn --help` can list the names; the layers
are imported when a model is built. `defaults` are the training options that reproduce each seed
(keys of `cnncli.train.config.TrainConfig`); an option missing here takes the engine's default, and
a missing `lr` means the optimizer's Keras default, as the seeds trained.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Callable

from ..errors import CnnError

ACTIVATION_CHOICES = ("relu", "sigmoid", "tanh")
# The largest side tried when looking for the smallest input an architecture takes.
_MAX_SIDE = 4096


@dataclass(frozen=True)
class ArchSpec:
    name: str
    description: str
    source: str
    build: Callable  # build(input_shape, num_classes, *, activation, dropout, rngs) -> nnx.Module
    defaults: dict = field(default_factory=dict)
    binary_head: bool = False  # one sigmoid unit when num_classes == 2
    activation: str | None = None  # default of --activation; None: the option does not apply
    dropout: float | None = None  # default of --dropout; None: the option does not apply


def _layers_fn(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(f".{module}", __package__), name)


def _dry_run(fn, input_shape, num_classes, activation, dropout) -> bool:
    """True if `fn` accepts `input_shape`: shape arithmetic only, no parameters."""
    from .blocks import InputTooSmall, Stack

    try:
        fn(Stack(input_shape, None, dry=True), num_classes, activation, dropout)
    except InputTooSmall:
        return False
    return True


def _min_side(fn, channels, num_classes, activation, dropout) -> int | None:
    return next((n for n in range(1, _MAX_SIDE + 1)
                 if _dry_run(fn, (n, n, channels), num_classes, activation, dropout)), None)


def _sequential(module: str, name: str) -> Callable:
    """The `build` of an architecture written as a layer function of `module`."""

    def build(input_shape, num_classes, *, activation, dropout, rngs):
        from .blocks import SeqNet, Stack

        fn = _layers_fn(module, name)
        # Shapes first: a too-small input fails here, before any parameter is allocated.
        if not _dry_run(fn, input_shape, num_classes, activation, dropout):
            h, w, c = input_shape
            n = _min_side(fn, c, num_classes, activation, dropout)
            raise CnnError(f"arch {name} needs inputs of at least {n}x{n}; got {h}x{w}")
        stack = Stack(input_shape, rngs)
        fn(stack, num_classes, activation, dropout)
        return SeqNet(stack.layers, name)

    return build


# The seeds trained on raw pixels / 255 without augmentation, at a constant learning rate.
_SEED = dict(normalize="unit", augment="none", schedule="constant")
# Short schedules for the BatchNorm nets: per-channel standardisation, SGD (nesterov), one-cycle.
_MODERN = dict(normalize="standard", optimizer="sgd", momentum=0.9)

_SPECS = [
    ArchSpec("net1", "2 same convs (32, 64) + 2x2 max pool at stride 1 + Dense 128", "seed 001 net_1",
             _sequential("seednets", "net1"), dict(_SEED, optimizer="adam", batch_size=128, epochs=16),
             activation="relu"),
    ArchSpec("net2", "net1 without pooling, second conv at stride 2", "seed 001 net_2",
             _sequential("seednets", "net2"), dict(_SEED, optimizer="adam", batch_size=128, epochs=16),
             activation="relu"),
    ArchSpec("mlp", "Flatten, 2 x (Dense 512 sigmoid + dropout 0.2)", "seed 003 perceptron",
             _sequential("seednets", "mlp"), dict(_SEED, optimizer="adam", batch_size=32, epochs=30),
             activation="sigmoid", dropout=0.2),
    ArchSpec("cnn003", "3 valid convs of 32, 2 max pools, Dense 512 sigmoid, dropout 0.2", "seed 003 CNN",
             _sequential("seednets", "cnn003"), dict(_SEED, optimizer="adam", batch_size=32, epochs=30),
             activation="sigmoid", dropout=0.2),
    # Seed 004 gives no epoch count for the workshop; 10 is this project's choice.
    ArchSpec("workshop", "conv 32 / pool / conv 64 / pool (valid), Dense 64, dropout 0.3", "seed 004 workshop",
             _sequential("seednets", "workshop"),
             dict(_SEED, optimizer="rmsprop", batch_size=32, epochs=10, val_split=0.1),
             activation="relu", dropout=0.3),
    # Seed 004 describes LeNet-5's layers only; its training options follow the workshop's family.
    ArchSpec("lenet5", "LeNet-5: conv 6 5x5 / avg pool / conv 16 5x5 / avg pool / 120 / 84, tanh",
             "seed 004 (LeCun et al. 1998)", _sequential("seednets", "lenet5"),
             dict(_SEED, optimizer="adam", batch_size=32, epochs=10), activation="tanh"),
    ArchSpec("catsdogs", "3 x (conv 3x3 relu, BN, max pool, dropout 0.25), Dense 512, BN, dropout 0.5",
             "seed 000", _sequential("seednets", "catsdogs"),
             dict(_SEED, optimizer="adam", batch_size=32, epochs=10, image_size=128), binary_head=True),
    # The paper's recipe (SGD 0.9, weight decay 5e-4, lr 0.01 at batch 256) scaled to batch 32,
    # which fits in a CPU's memory.
    ArchSpec("vgg16", "VGG-16: 13 same 3x3 convs in 5 blocks, Dense 4096 x 2", "seed 004 (Simonyan & Zisserman 2015)",
             _sequential("seednets", "vgg16"),
             dict(normalize="standard", augment="flip,crop", optimizer="sgd", momentum=0.9, lr=0.00125,
                  weight_decay=5e-4, batch_size=32, epochs=74, image_size=224, schedule="constant"),
             dropout=0.5),
    ArchSpec("resnet_cifar", "airbench-like residual net: stem + 3 conv/pool/BN stages, global max pool",
             "this project, after airbench94", _sequential("resnets", "resnet_cifar"),
             dict(_MODERN, lr=0.4, weight_decay=5e-4, schedule="onecycle", batch_size=512, epochs=10,
                  augment="flip,crop", label_smoothing=0.2, tta_flip=True)),
    ArchSpec("airbench94", "frozen 2x2 whitening conv, 3 conv groups (64/256/256), BatchNorm shifts only, GELU",
             "Jordan 2024", _sequential("airbench", "airbench94"),
             # airbench's hyperparameters (batch 1024, summed loss) for a mean loss: lr 11.5 / (1 + 1/(1 - 0.85))
             # = 1.5 per 1024 images, so 0.375 at batch 256 (XLA:CPU's fastest here, 236 against 217 images/s
             # at 512), and L2 0.0153 / 11.5 = 1.33e-3. 7 epochs take ~26 min on the 2-core CPU.
             dict(_MODERN, momentum=0.85, lr=0.375, weight_decay=1.33e-3, bn_bias_lr=64.0, schedule="onecycle",
                  batch_size=256, epochs=7, augment="crop:2,altflip", label_smoothing=0.2, lookahead=True,
                  tta_flip=True, tta_shift=1)),
    ArchSpec("fastcnn", "2 x (valid conv 3x3, max pool 2, BN, relu) with 32/64 channels, linear head",
             "this project, after seed 004's workshop", _sequential("resnets", "fastcnn"),
             dict(normalize="standard", optimizer="adam", lr=1e-2, schedule="onecycle", batch_size=128, epochs=2)),
    ArchSpec("resnet20", "ResNet-20: 3 x 3 basic blocks (16, 32, 64 channels)", "He et al. 2016",
             _sequential("resnets", "resnet20"),
             dict(_MODERN, lr=0.1, weight_decay=1e-4, schedule="cosine", batch_size=128, epochs=30,
                  augment="flip,crop", label_smoothing=0.1)),
    ArchSpec("resnet_photo", "residual net for ~128x128 photos: stride-2 stem, 4 basic blocks, avg pool",
             "this project", _sequential("resnets", "resnet_photo"),
             dict(_MODERN, lr=0.1, weight_decay=5e-4, schedule="onecycle", batch_size=64, epochs=30,
                  image_size=128, augment="flip,crop", label_smoothing=0.1, tta_flip=True)),
    # Without --pretrained it trains from scratch like the others; with ImageNet weights
    # (`cnncli.pretrained`) a new head is trained on 224x224 inputs normalised as ImageNet was.
    ArchSpec("efficientnet_lite0", "EfficientNet-Lite0: stem, 16 MBConv blocks (depthwise, ReLU6), 1x1 head 1280",
             "Tan & Le 2019 (seed 004's transfer learning)", _sequential("efficientnet", "efficientnet_lite0"),
             dict(_MODERN, lr=0.05, weight_decay=4e-5, schedule="cosine", batch_size=32, epochs=30, image_size=224,
                  augment="flip,crop", label_smoothing=0.1), dropout=0.2),
]
ARCHS: dict[str, ArchSpec] = {s.name: s for s in _SPECS}


def get_arch(name: str) -> ArchSpec:
    """The spec called `name`, or a CnnError that lists the known names."""
    try:
        return ARCHS[name]
    except KeyError:
        raise CnnError(f"unknown arch {name!r}; known: {', '.join(ARCHS)}") from None


def _check(spec: ArchSpec, input_shape, num_classes, activation, dropout) -> tuple[str | None, float | None]:
    """Validate user-set options; returns the activation and dropout to build with."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise CnnError(f"input shape must be three positive integers H,W,C; got {tuple(input_shape)}")
    if num_classes < 2:
        raise CnnError(f"a classifier needs at least 2 classes; got {num_classes}")
    if activation is not None:
        if spec.activation is None:
            raise CnnError(f"arch {spec.name} has a fixed activation; --activation does not apply")
        if activation not in ACTIVATION_CHOICES:
            raise CnnError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATION_CHOICES)}")
    if dropout is not None:
        if spec.dropout is None:
            raise CnnError(f"arch {spec.name} has no tunable dropout; --dropout does not apply")
        if not 0.0 <= dropout < 1.0:
            raise CnnError(f"--dropout must be in [0, 1); got {dropout}")
    return (activation or spec.activation,
            spec.dropout if dropout is None else dropout)


def create_model(name: str, input_shape: tuple[int, int, int], num_classes: int, *,
                 activation: str | None = None, dropout: float | None = None, seed: int = 0):
    """Build architecture `name` for `input_shape` (H, W, C) and `num_classes`, in train mode.

    `activation`/`dropout` None take the architecture's defaults. Parameters come from the
    `params` stream of `nnx.Rngs(params=seed, dropout=seed + 1)` (keys of the "rbg" kind);
    dropout masks from the `dropout` stream, which the model keeps.
    """
    spec = get_arch(name)
    input_shape = tuple(int(n) for n in input_shape)
    act, rate = _check(spec, input_shape, num_classes, activation, dropout)
    return _compiled_build()(name, input_shape, num_classes, act, rate, seed)


def _build(name, input_shape, num_classes, activation, dropout, seed):
    import jax
    from flax import nnx

    # XLA's RngBitGenerator ("rbg") compiles about 4x faster on CPU than the default threefry.
    rngs = nnx.Rngs(params=jax.random.key(seed, impl="rbg"), dropout=jax.random.key(seed + 1, impl="rbg"))
    return ARCHS[name].build(input_shape, num_classes, activation=activation, dropout=dropout, rngs=rngs)


@functools.cache
def _compiled_build():
    """`_build` as one XLA program per architecture and shape (the seed is traced): it draws all the
    initial weights at once, where eager code would compile every parameter shape apart."""
    from flax import nnx  # here, so that importing the registry does not import Flax

    return nnx.jit(_build, static_argnums=(0, 1, 2, 3, 4))


def abstract_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **kw):
    """The model with shapes and dtypes only (nnx.eval_shape): instant even for VGG-16."""
    from flax import nnx

    return nnx.eval_shape(lambda: create_model(name, input_shape, num_classes, **kw))
