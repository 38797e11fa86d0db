"""Building blocks shared by every architecture, and the `Stack` that assembles them.

A network is a `SeqNet`: an ordered list of layers applied one after the other, as a Keras
Sequential model is. Keeping every network in that one form is what lets `summary` trace the
real module layer by layer (output shape, parameters, multiply-adds) instead of a table typed by hand.

`Stack` builds the list while tracking the output shape, so dense layers know their input size
and an input that is too small is caught before any parameter is allocated. With `dry=True` it only
does the shape arithmetic, which is how the registry finds the smallest input an architecture takes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import Conv, activate, avg_pool, conv2d_act, dense, max_pool

# Keras' defaults (glorot-uniform kernels, zero biases): the seeds trained with them, and their
# learning curves depend on the initial scale (flax's own default is lecun-normal).
KERAS_KERNEL_INIT = nnx.initializers.glorot_uniform()
# For the ReLU residual nets: He et al. (2015), fan-in; uniform compiles faster than truncated normal.
HE_INIT = nnx.initializers.he_uniform()


class Frozen(nnx.Variable):
    """Model state set once (from data) and never trained: not an nnx.Param, so no optimizer sees it."""


class InputTooSmall(Exception):
    """A layer's output would have no pixels; the registry turns this into a CnnError."""


def conv_out(n: int, kernel: int, stride: int, padding: str) -> int:
    """Output length of a convolution or pooling window along one axis.

    valid: floor((n - k) / s) + 1; same: ceil(n / s) (the padding P makes (n - k + 2P) / s + 1 exact).
    """
    if padding == "same":
        return -(-n // stride)
    return (n - kernel) // stride + 1


def make_conv(cin, cout, kernel, stride=1, padding="same", *, use_bias=True, kernel_init=KERAS_KERNEL_INIT,
              rngs) -> nnx.Conv:
    """Every architecture's convolutions are made here: `layers.Conv`, an nnx.Conv with fast gradients."""
    return Conv(cin, cout, (kernel, kernel), (stride, stride), padding=padding.upper(),
                use_bias=use_bias, kernel_init=kernel_init, rngs=rngs)


class Conv2D(nnx.Module):
    """Keras' Conv2D: a 2-D convolution followed by an optional activation."""

    kind = "conv2d"

    def __init__(self, cin, cout, kernel, stride=1, padding="same", activation=None, *, rngs):
        self.conv = make_conv(cin, cout, kernel, stride, padding, rngs=rngs)
        self.activation = activation
        self.spec = f"{kernel}x{kernel}/{stride} {padding}"

    def __call__(self, x):
        c = self.conv  # its parameters; `conv2d_act` computes what c(x) and the activation would
        return conv2d_act(x, c.kernel[...], c.bias[...], c.strides, c.padding, self.activation)

    def describe(self) -> str:
        return f"Conv {self.conv.out_features} {self.spec}" + (f" {self.activation}" if self.activation else "")


class Dense(nnx.Module):
    """Keras' Dense: an affine map followed by an optional activation.

    The matrix is stored (out, in), as PyTorch's Linear stores it, not (in, out) as Keras' kernel:
    its gradient is then dy^T x, which XLA:CPU computes at ~115 GFLOP/s, where x^T dy (the
    gradient of an (in, out) kernel, batch contracted on the leading axis of the big operand) ran
    at 84. net1's 50176->128 layer: backward 22 ms instead of 30 per step of 128; net1 trains
    6.3% faster, net2 3.3% (in-process A/B, 2026-12-01). The forward and input gradient run at
    the same speed in both layouts. `layers.dense` takes large layers' dy^T x further, to YNNPACK.
    """

    kind = "dense"

    def __init__(self, din, dout, activation=None, *, rngs):
        # Drawn as nnx.Linear draws its (in, out) kernel, and a key spent on the (zero) bias as it
        # does: every layer of a seed starts from the same weights as with nnx.Linear.
        self.weight = nnx.Param(KERAS_KERNEL_INIT(rngs.params(), (din, dout)).T)
        rngs.params()
        self.bias = nnx.Param(jnp.zeros((dout,)))
        self.activation = activation

    def __call__(self, x):
        return activate(self.activation, dense(x, self.weight[...]) + self.bias[...])

    def describe(self) -> str:
        return f"Dense {self.weight.shape[0]}" + (f" {self.activation}" if self.activation else "")


class Pool(nnx.Module):
    """Max or average pooling through the measured forms of `pooling.py`."""

    def __init__(self, op: str, window: int, stride: int, padding: str = "valid"):
        if op == "avg" and padding != "valid":
            raise ValueError("average pooling is only implemented with valid padding")
        self.op, self.window, self.stride, self.padding = op, window, stride, padding
        self.kind = "max_pooling2d" if op == "max" else "average_pooling2d"

    def __call__(self, x):
        if self.op == "max":
            return max_pool(x, self.window, self.stride, self.padding.upper())
        return avg_pool(x, self.window, self.stride)

    def describe(self) -> str:
        return f"{self.op.capitalize()}Pool {self.window}x{self.window}/{self.stride} {self.padding}"


class GlobalPool(nnx.Module):
    """Global average or max pooling: (B, H, W, C) -> (B, C)."""

    def __init__(self, op: str):
        self.op = op
        self.kind = f"global_{op}_pool"

    def __call__(self, x):
        return x.mean(axis=(1, 2)) if self.op == "avg" else x.max(axis=(1, 2))

    def describe(self) -> str:
        return f"Global{self.op.capitalize()}Pool"


class Flatten(nnx.Module):
    """(B, H, W, C) -> (B, H*W*C) in NHWC order, as Keras' Flatten with channels-last data."""

    kind = "flatten"

    def __call__(self, x):
        return x.reshape(x.shape[0], -1)

    def describe(self) -> str:
        return "Flatten"


class BatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm over the last axis; momentum/epsilon are set by each architecture."""

    kind = "batch_normalization"

    def describe(self) -> str:
        return f"BatchNorm m={self.momentum} eps={self.epsilon}"


class Dropout(nnx.Dropout):
    """nnx.Dropout; its random stream is forked from the model's `dropout` stream."""

    kind = "dropout"

    def describe(self) -> str:
        return f"Dropout {self.rate}"


class SeqNet(nnx.Module):
    """A network as an ordered list of layers: `model(x)` applies them in turn."""

    def __init__(self, layers: list, arch: str):
        self.layers = nnx.List(layers)
        self.arch = arch
        self.frozen = 0  # layers [0, frozen) are not trained (`--freeze`): no gradient is traced through them
        self.start = 0  # the input is layer `start`'s (train/prefix.py: the frozen layers' output, cached)

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            if i < self.start:
                continue
            if i == self.frozen and i:
                x = jax.lax.stop_gradient(x)
            x = layer(x)
        return x


class Stack:
    """Appends layers while tracking the output shape (H, W, C), or (features,) after flattening."""

    def __init__(self, input_shape: tuple[int, int, int], rngs: nnx.Rngs | None, dry: bool = False):
        self.shape = tuple(input_shape)
        self.rngs = rngs
        self.dry = dry
        self.layers: list = []

    @property
    def channels(self) -> int:
        return self.shape[-1]

    def add(self, make, shape: tuple) -> None:
        """Record a layer whose output has `shape`; `make()` builds it unless this is a dry run."""
        if any(n < 1 for n in shape):
            raise InputTooSmall
        if not self.dry:
            self.layers.append(make())
        self.shape = tuple(shape)

    def conv(self, cout, kernel, stride=1, padding="same", activation=None) -> None:
        h, w, cin = self.shape
        out = (conv_out(h, kernel, stride, padding), conv_out(w, kernel, stride, padding), cout)
        self.add(lambda: Conv2D(cin, cout, kernel, stride, padding, activation, rngs=self.rngs), out)

    def pool(self, op, window, stride, padding="valid") -> None:
        h, w, c = self.shape
        out = (conv_out(h, window, stride, padding), conv_out(w, window, stride, padding), c)
        self.add(lambda: Pool(op, window, stride, padding), out)

    def global_pool(self, op) -> None:
        self.add(lambda: GlobalPool(op), (self.channels,))

    def batchnorm(self, momentum, epsilon) -> None:
        c = self.channels
        self.add(lambda: BatchNorm(c, momentum=momentum, epsilon=epsilon, rngs=self.rngs), self.shape)

    def dropout(self, rate) -> None:
        self.add(lambda: Dropout(rate, rngs=self.rngs), self.shape)

    def flatten(self) -> None:
        self.add(Flatten, (math.prod(self.shape),))

    def dense(self, units, activation=None) -> None:
        din = self.channels
        self.add(lambda: Dense(din, units, activation, rngs=self.rngs), (units,))
