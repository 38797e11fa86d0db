"""The seed experiments' networks, layer for layer as their Keras code or text describes them.

Each function appends layers to a `Stack` for any input shape and number of classes. The last
layer gives logits: the seeds' softmax (or sigmoid) lives in the loss, not in the model.
Parameter counts at the seeds' shapes equal Keras' `model.summary()` (pinned in tests/test_models.py).
"""

from __future__ import annotations

from .blocks import Stack

# Keras' BatchNormalization defaults; seed 000 used them.
KERAS_BN = dict(momentum=0.99, epsilon=1e-3)


def net1(s: Stack, num_classes: int, activation: str, dropout: float | None) -> None:
    """Seed 001 `net_1`: two same-padded convs, a 2x2 max pool at stride 1, Dense 128."""
    s.conv(32, 3, 1, "same", activation)
    s.conv(64, 3, 1, "same", activation)
    s.pool("max", 2, 1, "same")
    s.flatten()
    s.dense(128, activation)
    s.dense(num_classes)


def net2(s: Stack, num_classes: int, activation: str, dropout: float | None) -> None:
    """Seed 001 `net_2`: net_1 without pooling; the second conv strides by 2 instead."""
    s.conv(32, 3, 1, "same", activation)
    s.conv(64, 3, 2, "same", activation)
    s.flatten()
    s.dense(128, activation)
    s.dense(num_classes)


def mlp(s: Stack, num_classes: int, activation: str, dropout: float) -> None:
    """Seed 003 multilayer perceptron: 784-512-512-10, sigmoid, dropout 0.2 (98.17% on MNIST)."""
    s.flatten()
    s.dense(512, activation)
    s.dropout(dropout)
    s.dense(512, activation)
    s.dropout(dropout)
    s.dense(num_classes)


def cnn003(s: Stack, num_classes: int, activation: str, dropout: float) -> None:
    """Seed 003 CNN (99.35% on MNIST). Keras defaults: valid padding, stride 1.

    Choices where the text is silent: the first conv has no activation (Keras' default 'linear',
    as the text gives none); the third conv "duplicates the conv with the same parameters", read
    as a copy of the second one, so it takes the activation (sigmoid) too.
    """
    s.conv(32, 3, 1, "valid")
    s.conv(32, 3, 1, "valid", activation)
    s.pool("max", 2, 2)
    s.conv(32, 3, 1, "valid", activation)
    s.pool("max", 2, 2)
    s.dropout(dropout)
    s.flatten()
    s.dense(512, activation)
    s.dropout(dropout)
    s.dense(num_classes)


def workshop(s: Stack, num_classes: int, activation: str, dropout: float) -> None:
    """Seed 004 MNIST workshop: conv32-pool-conv64-pool (valid, ReLU), Dense 64, dropout 0.3."""
    s.conv(32, 3, 1, "valid", activation)
    s.pool("max", 2, 2)
    s.conv(64, 3, 1, "valid", activation)
    s.pool("max", 2, 2)
    s.flatten()
    s.dense(64, activation)
    s.dropout(dropout)
    s.dense(num_classes)


def lenet5(s: Stack, num_classes: int, activation: str, dropout: float | None) -> None:
    """LeNet-5 (LeCun et al. 1998) as seed 004 counts it: 61,706 parameters on 28x28 MNIST.

    The first conv is same-padded so a 28x28 digit gives the 28x28x6 maps of the original
    32x32 input; tanh throughout, average pooling 2x2 at stride 2.
    """
    s.conv(6, 5, 1, "same", activation)
    s.pool("avg", 2, 2)
    s.conv(16, 5, 1, "valid", activation)
    s.pool("avg", 2, 2)
    s.flatten()
    s.dense(120, activation)
    s.dense(84, activation)
    s.dense(num_classes)


def catsdogs(s: Stack, num_classes: int, activation: str | None, dropout: float | None) -> None:
    """Seed 000 cats-vs-dogs CNN at 128x128x3: three conv/BN/pool/dropout blocks, Dense 512.

    Two classes get Keras' one sigmoid unit (binary cross-entropy), as the seed did.
    """
    for filters in (32, 64, 128):
        s.conv(filters, 3, 1, "valid", "relu")
        s.batchnorm(**KERAS_BN)
        s.pool("max", 2, 2)
        s.dropout(0.25)
    s.flatten()
    s.dense(512, "relu")
    s.batchnorm(**KERAS_BN)
    s.dropout(0.5)
    s.dense(1 if num_classes == 2 else num_classes)


def vgg16(s: Stack, num_classes: int, activation: str | None, dropout: float) -> None:
    """VGG-16 (Simonyan & Zisserman 2015), seed 004: 138,357,544 parameters at 224x224x3, 1000 classes.

    Layers as Keras' `applications.VGG16`; the paper's dropout after the two 4096 layers adds no parameters.
    """
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            s.conv(filters, 3, 1, "same", "relu")
        s.pool("max", 2, 2)
    s.flatten()
    for _ in range(2):
        s.dense(4096, "relu")
        s.dropout(dropout)
    s.dense(num_classes)
