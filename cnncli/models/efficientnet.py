"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of TensorFlow's efficientnet/lite builder).

Lite means: ReLU6 instead of swish, no squeeze-and-excitation, and the stem (32 channels) and head
(1,280) not scaled. 16 MBConv blocks (Sandler et al. 2018): a 1x1 expansion, a depthwise k x k
convolution, a 1x1 projection, each followed by BatchNorm (momentum 0.99, eps 1e-3, TF's), a residual
connection where the shape allows, with stochastic depth (drop connect) rising to 0.2 over the blocks.
"SAME" padding is TF's (the extra pixel of an even total at the end), which is XLA's too: the
ImageNet weights (`cnncli.pretrained`) were trained with it.

The layer order and the parameter names below are what `pretrained.lite0_arrays` maps the
PyTorch state dict onto: stem, blocks 0-15, head, pool, dropout, dense.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from .blocks import HE_INIT, Stack, conv_out, make_conv
from .depthwise import depthwise_conv

BN = dict(momentum=0.99, epsilon=1e-3)
# (repeats, kernel, first stride, expansion, output channels) of each stage; the stem gives 32.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
DROP_CONNECT = 0.2


def relu6(x):
    return jnp.clip(x, 0, 6)


class ConvBN(nnx.Module):
    """Conv without bias -> BatchNorm -> optional ReLU6."""

    kind = "conv_bn"

    def __init__(self, cin, cout, kernel, stride=1, act=True, *, rngs):
        self.conv = make_conv(cin, cout, kernel, stride, use_bias=False, kernel_init=HE_INIT, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, rngs=rngs, **BN)
        self.act = act
        self.spec = f"{kernel}x{kernel}/{stride}"

    def __call__(self, x):
        y = self.bn(self.conv(x))
        return relu6(y) if self.act else y

    def describe(self) -> str:
        return f"Conv {self.conv.out_features} {self.spec} + BN" + (" + relu6" if self.act else "")


class DepthwiseBN(nnx.Module):
    """Depthwise k x k convolution -> BatchNorm -> ReLU6."""

    def __init__(self, channels, kernel, stride, *, rngs):
        # He init over a fan-in of k*k (one input channel per filter).
        self.kernel = nnx.Param(HE_INIT(rngs.params(), (kernel, kernel, 1, channels)))
        self.bn = nnx.BatchNorm(channels, rngs=rngs, **BN)
        self.stride = stride

    def __call__(self, x):
        return relu6(self.bn(depthwise_conv(x, self.kernel[...], self.stride)))


class MBConv(nnx.Module):
    """Inverted residual: expand 1x1 -> depthwise -> project 1x1 (+ input, dropped per example in training)."""

    kind = "mbconv"

    def __init__(self, cin, cout, kernel, stride, expand, drop, *, rngs):
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1, rngs=rngs) if expand != 1 else None
        self.depthwise = DepthwiseBN(mid, kernel, stride, rngs=rngs)
        self.project = ConvBN(mid, cout, 1, act=False, rngs=rngs)
        self.residual = stride == 1 and cin == cout
        # Drop connect: the whole branch of an example is dropped (kept ones scaled by 1/(1-p)).
        self.drop = nnx.Dropout(drop, broadcast_dims=(1, 2, 3), rngs=rngs) if self.residual and drop else None
        self.spec = (cout, kernel, stride, expand)

    def __call__(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        if not self.residual:
            return y
        return x + (y if self.drop is None else self.drop(y))

    def describe(self) -> str:
        cout, k, s, e = self.spec
        return f"MBConv{e} {cout} {k}x{k}/{s}" + (" +res" if self.residual else "")


def _blocks():
    """(cin, cout, kernel, stride, expand) of the 16 blocks in order."""
    cin = STEM
    for repeats, kernel, stride, expand, cout in STAGES:
        for r in range(repeats):
            yield cin, cout, kernel, stride if r == 0 else 1, expand
            cin = cout


def efficientnet_lite0(s: Stack, num_classes, activation, dropout):
    h, w, c = s.shape
    s.add(lambda: ConvBN(c, STEM, 3, 2, rngs=s.rngs), (conv_out(h, 3, 2, "same"), conv_out(w, 3, 2, "same"), STEM))
    blocks = list(_blocks())
    for i, (cin, cout, kernel, stride, expand) in enumerate(blocks):
        h, w, _ = s.shape
        drop = DROP_CONNECT * i / len(blocks)
        s.add(lambda a=(cin, cout, kernel, stride, expand, drop): MBConv(*a, rngs=s.rngs),
              (conv_out(h, kernel, stride, "same"), conv_out(w, kernel, stride, "same"), cout))
    s.add(lambda: ConvBN(blocks[-1][1], HEAD, 1, rngs=s.rngs), s.shape[:2] + (HEAD,))
    s.global_pool("avg")
    s.dropout(dropout)
    s.dense(num_classes)

