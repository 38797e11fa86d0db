"""Residual networks for a CPU budget: BatchNorm (momentum 0.9), bias-free convs, He init.

- `resnet_cifar`: airbench94-like (Jordan 2024): a conv stem, three stages of conv -> 2x2 max pool ->
  BN -> ReLU followed by a residual conv, global max pool. Wide and shallow, so few FLOPs per image.
- `resnet20`: He et al. (2016) CIFAR ResNet-20 (3 x 3 basic blocks of 16/32/64 channels),
  with 1x1 projection shortcuts where the shape changes.
- `resnet_photo`: for 128x128 photos: a stride-2 stem and a stride-2 max pool (as ResNet-18's), four
  basic blocks of 32/64/128/256 channels, global average pool.

Every block is one layer of the `SeqNet`, so `cnn summary` shows one row per block.
"""

from __future__ import annotations

import jax
from flax import nnx

from .blocks import HE_INIT, Stack, activate, conv_out, make_conv
from .layers import max_pool

# PyTorch's BatchNorm defaults (momentum 0.1 there = 0.9 here): the usual setting for short schedules.
MODERN_BN = dict(momentum=0.9, epsilon=1e-5)


class ConvBN(nnx.Module):
    """Conv (no bias: the BatchNorm shift replaces it) -> BatchNorm -> optional activation."""

    kind = "conv_bn"

    def __init__(self, cin, cout, kernel=3, stride=1, activation="relu", *, zero_scale=False, rngs):
        self.conv = make_conv(cin, cout, kernel, stride, use_bias=False, kernel_init=HE_INIT, rngs=rngs)
        # A zero BN scale makes a residual branch start as the identity (Goyal et al. 2017),
        # which lets short, high-learning-rate schedules train stably.
        scale_init = nnx.initializers.zeros if zero_scale else nnx.initializers.ones
        self.bn = nnx.BatchNorm(cout, scale_init=scale_init, rngs=rngs, **MODERN_BN)
        self.activation = activation
        self.spec = f"{kernel}x{kernel}/{stride}"

    def __call__(self, x):
        return activate(self.activation, self.bn(self.conv(x)))

    def describe(self) -> str:
        return f"Conv {self.conv.out_features} {self.spec} + BN" + (f" + {self.activation}" if self.activation else "")


class BasicBlock(nnx.Module):
    """He et al.'s basic block: relu(x' + BN(conv(relu(BN(conv(x)))))), x' a 1x1 projection if needed."""

    kind = "basic_block"

    def __init__(self, cin, cout, stride, *, rngs):
        self.branch1 = ConvBN(cin, cout, 3, stride, "relu", rngs=rngs)
        self.branch2 = ConvBN(cout, cout, 3, 1, None, zero_scale=True, rngs=rngs)
        self.project = ConvBN(cin, cout, 1, stride, None, rngs=rngs) if stride != 1 or cin != cout else None

    def __call__(self, x):
        shortcut = x if self.project is None else self.project(x)
        return jax.nn.relu(shortcut + self.branch2(self.branch1(x)))

    def describe(self) -> str:
        return f"BasicBlock {self.branch1.conv.out_features} /{self.branch1.conv.strides[0]}" + (
            " +proj" if self.project is not None else "")


class PoolStage(nnx.Module):
    """airbench's conv group with a residual second conv: y = relu(BN(pool(conv(x)))); y + relu(BN(conv(y)))."""

    kind = "pool_stage"

    def __init__(self, cin, cout, *, residual=True, padding="same", rngs):
        self.conv = make_conv(cin, cout, 3, padding=padding, use_bias=False, kernel_init=HE_INIT, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, rngs=rngs, **MODERN_BN)
        self.residual = ConvBN(cout, cout, 3, 1, "relu", zero_scale=True, rngs=rngs) if residual else None

    def __call__(self, x):
        # Pooling before BN and the activation: both then run on a quarter of the pixels.
        y = jax.nn.relu(self.bn(max_pool(self.conv(x), 2, 2, "VALID")))
        return y if self.residual is None else y + self.residual(y)

    def describe(self) -> str:
        pad = "" if self.conv.padding == "SAME" else f" {self.conv.padding.lower()}"
        return (f"Conv {self.conv.out_features} 3x3{pad} + MaxPool 2 + BN + relu"
                + ("" if self.residual is None else ", +residual conv"))


def _stem(s: Stack, cout: int, stride: int = 1) -> None:
    h, w, cin = s.shape
    s.add(lambda: ConvBN(cin, cout, 3, stride, "relu", rngs=s.rngs),
          (conv_out(h, 3, stride, "same"), conv_out(w, 3, stride, "same"), cout))


def _basic_block(s: Stack, cout: int, stride: int) -> None:
    h, w, cin = s.shape
    s.add(lambda: BasicBlock(cin, cout, stride, rngs=s.rngs),
          (conv_out(h, 3, stride, "same"), conv_out(w, 3, stride, "same"), cout))


def _pool_stage(s: Stack, cout: int, residual: bool = True, padding: str = "same") -> None:
    h, w, cin = s.shape
    h, w = (conv_out(h, 3, 1, padding), conv_out(w, 3, 1, padding))
    s.add(lambda: PoolStage(cin, cout, residual=residual, padding=padding, rngs=s.rngs), (h // 2, w // 2, cout))


# Channel widths of resnet_cifar's stem and three stages. airbench94 uses 64/256/256 (~0.12 GMAC per
# image); these make 38M MACs so that ~10 epochs of CIFAR-10 fit in a CPU half-hour.
CIFAR_WIDTHS = (24, 32, 96, 192)


def resnet_cifar(s: Stack, num_classes: int, activation: str | None, dropout: float | None) -> None:
    """Stem and three pooling stages (32x32 -> 16 -> 8 -> 4), global max pool, linear head.

    Most of the cost is the first stage's conv at full resolution, so the early stages are narrow
    and the late ones wide, where a channel costs 4x or 16x fewer multiply-adds.
    """
    stem, *stages = CIFAR_WIDTHS
    _stem(s, stem)
    for width in stages:
        _pool_stage(s, width)
    s.global_pool("max")
    s.dense(num_classes)


def fastcnn(s: Stack, num_classes: int, activation: str | None, dropout: float | None) -> None:
    """Two valid conv/pool/BN stages (32, 64 channels; 28 -> 13 -> 5 px) and a linear head.

    The seed-004 workshop net's convolutions with BatchNorm after each pool and no hidden dense
    layer: BN lets a one-cycle schedule train it in one epoch, and pooling first keeps BN and
    ReLU on a quarter of the pixels.
    """
    for width in (32, 64):
        _pool_stage(s, width, residual=False, padding="valid")
    s.flatten()
    s.dense(num_classes)


def resnet20(s: Stack, num_classes: int, activation: str | None, dropout: float | None) -> None:
    """ResNet-20: 16-channel stem, 3 stages x 3 basic blocks (16, 32, 64), global average pool."""
    _stem(s, 16)
    for i, width in enumerate((16, 32, 64)):
        for j in range(3):
            _basic_block(s, width, 2 if i > 0 and j == 0 else 1)
    s.global_pool("avg")
    s.dense(num_classes)


def resnet_photo(s: Stack, num_classes: int, activation: str | None, dropout: float | None) -> None:
    """128x128 photos: stride-2 stem (64x64), 3x3/2 max pool (32x32), blocks at 32, 16, 8, 4 px."""
    _stem(s, 32, stride=2)
    s.pool("max", 3, 2, "same")
    for width, stride in ((32, 1), (64, 2), (128, 2), (256, 2)):
        _basic_block(s, width, stride)
    s.global_pool("avg")
    s.dense(num_classes)
