"""airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"), in Flax NNX.

A frozen 2x2 patch-whitening conv, three conv groups (conv -> 2x2 max pool -> BN -> GELU -> conv ->
BN -> GELU) of 64/256/256 channels, a 3x3 max pool and a bias-free linear head scaled by 1/9. Its
BatchNorms learn shifts only (no scales), and every conv starts with its first `cin` filters as
identities (Dirac), so the untrained net passes its input through. Both make the high learning
rates of a few-epoch schedule safe. ~118M multiply-adds per 32x32 image, 3x resnet_cifar's.

The whitening kernel comes from the training images (`init_from_data`, called by the trainer before
the first step): the eigenvectors of the 2x2x3 patch covariance, scaled by 1/sqrt(eigenvalue), and
their negatives. It is an `nnx.Variable` that is not an `nnx.Param`, so no optimizer ever touches it,
and checkpoints store it with the BatchNorm statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .blocks import Frozen
from .layers import Conv, conv2d, max_pool

WIDTHS = (64, 256, 256)
WHITEN_SIZE = 2
WHITEN_EPS = 5e-4  # airbench's: keeps the near-zero-variance directions from blowing up
# PyTorch's BatchNorm momentum 0.6 (flax counts the other way), epsilon as airbench's.
BN = dict(momentum=0.4, epsilon=1e-12, use_scale=False)
# PyTorch's default conv init, U(+-1/sqrt(fan_in)): airbench's learning rates were tuned with it.
TORCH_INIT = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _dirac_init(key, shape, dtype=jnp.float32):
    """TORCH_INIT, with output filter i < cin the identity on input channel i (torch.nn.init.dirac_)."""
    kh, kw, cin, cout = shape
    w = TORCH_INIT(key, shape, dtype)
    n = min(cin, cout)
    eye = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(cin, n, dtype=dtype))
    return w.at[..., :n].set(eye)


def whitening_kernel(images: np.ndarray, size: int = WHITEN_SIZE, eps: float = WHITEN_EPS) -> np.ndarray:
    """(size, size, C, 2*size*size*C) HWIO kernel whose outputs are whitened patches and their negatives."""
    c = images.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))  # n,h',w',c,kh,kw
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * c).astype(np.float64)
    cov = patches.T @ patches / len(patches)
    eigval, eigvec = np.linalg.eigh(cov)
    filters = (eigvec / np.sqrt(eigval + eps)).T[::-1]  # one filter per row, largest eigenvalue first
    filters = np.concatenate([filters, -filters])
    return filters.reshape(-1, size, size, c).transpose(1, 2, 3, 0).astype(np.float32)


class Whiten(nnx.Module):
    """A valid 2x2 conv with a frozen, data-derived kernel and a trained bias, then GELU."""

    kind = "whiten"

    def __init__(self, cin: int, *, rngs):
        cout = 2 * WHITEN_SIZE * WHITEN_SIZE * cin
        # Random until `init_from_data` (a model built outside training still computes something).
        self.kernel = Frozen(TORCH_INIT(rngs.params(), (WHITEN_SIZE, WHITEN_SIZE, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,)))

    def init_from_data(self, images) -> None:
        """Set the kernel from normalized training images (N, H, W, C)."""
        self.kernel[...] = jnp.asarray(whitening_kernel(np.asarray(images, np.float32)))

    def __call__(self, x):
        return jax.nn.gelu(conv2d(x, self.kernel[...], self.bias[...], 1, "VALID"))

    def describe(self) -> str:
        return f"Whitening conv {self.bias.shape[0]} {WHITEN_SIZE}x{WHITEN_SIZE} valid (frozen) + gelu"


class ConvGroup(nnx.Module):
    """conv -> 2x2 max pool -> BN -> GELU -> conv -> BN -> GELU (no residual, as airbench94)."""

    kind = "conv_group"

    def __init__(self, cin: int, cout: int, *, rngs):
        self.conv1 = Conv(cin, cout, (3, 3), padding="SAME", use_bias=False, kernel_init=_dirac_init, rngs=rngs)
        self.norm1 = nnx.BatchNorm(cout, rngs=rngs, **BN)
        self.conv2 = Conv(cout, cout, (3, 3), padding="SAME", use_bias=False, kernel_init=_dirac_init, rngs=rngs)
        self.norm2 = nnx.BatchNorm(cout, rngs=rngs, **BN)

    def __call__(self, x):
        x = jax.nn.gelu(self.norm1(max_pool(self.conv1(x), 2, 2, "VALID")))
        return jax.nn.gelu(self.norm2(self.conv2(x)))

    def describe(self) -> str:
        return f"Conv {self.conv1.out_features} + MaxPool 2 + BN + gelu, Conv + BN + gelu"


class ScaledHead(nnx.Module):
    """A bias-free linear layer times `scale` (airbench's 1/9: smaller logits early in training)."""

    kind = "dense"

    def __init__(self, din: int, dout: int, scale: float, *, rngs):
        self.linear = nnx.Linear(din, dout, use_bias=False, kernel_init=TORCH_INIT, rngs=rngs)
        self.scale = scale

    def __call__(self, x):
        return self.linear(x) * self.scale

    def describe(self) -> str:
        return f"Dense {self.linear.out_features} (no bias) x {self.scale:.3g}"


def airbench94(s, num_classes: int, activation: str | None, dropout: float | None) -> None:
    """32x32 -> whiten 31 -> 15 -> 7 -> 3 -> max pool 3 -> linear."""
    h, w, c = s.shape
    s.add(lambda: Whiten(c, rngs=s.rngs), (h - WHITEN_SIZE + 1, w - WHITEN_SIZE + 1, 2 * WHITEN_SIZE**2 * c))
    for width in WIDTHS:
        h, w, cin = s.shape
        s.add(lambda: ConvGroup(cin, width, rngs=s.rngs), (h // 2, w // 2, width))
    s.pool("max", 3, 3)
    s.flatten()
    din = s.channels
    s.add(lambda: ScaledHead(din, num_classes, 1 / 9, rngs=s.rngs), (num_classes,))
