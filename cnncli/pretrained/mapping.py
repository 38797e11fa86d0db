"""Pretrained arrays (PyTorch names and layouts) onto a Flax model of `cnncli.models`.

PyTorch stores a convolution's kernel (out, in, kh, kw) and a depthwise one (C, 1, kh, kw); the
models here take HWIO, (kh, kw, in, out) and (kh, kw, 1, C). Dense weights are (out, in) in both.
Every array's shape is checked; a head of another class count is left as initialised.
"""

from __future__ import annotations

import numpy as np

from ..errors import CnnError


def _set(var, array: np.ndarray, name: str) -> None:
    if tuple(var.shape) != array.shape:
        raise CnnError(f"pretrained {name}: shape {array.shape} does not fit the model's {tuple(var.shape)}")
    var.value = np.asarray(array, var.value.dtype)


def _conv(var, state, name):
    _set(var, state[name].transpose(2, 3, 1, 0), name)


def _bn(bn, state, prefix):
    for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
        _set(getattr(bn, ours), state[f"{prefix}.{theirs}"], f"{prefix}.{theirs}")


def efficientnet_lite0(model, state: dict, head: bool) -> None:
    """Stem, 16 MBConv blocks and the 1x1 head conv; the classifier too when `head`."""
    layers = model.layers
    _conv(layers[0].conv.kernel, state, "_conv_stem.weight")
    _bn(layers[0].bn, state, "_bn0")
    for i in range(16):
        block, p = layers[1 + i], f"_blocks.{i}"
        if block.expand is not None:
            _conv(block.expand.conv.kernel, state, f"{p}._expand_conv.weight")
            _bn(block.expand.bn, state, f"{p}._bn0")
        _conv(block.depthwise.kernel, state, f"{p}._depthwise_conv.weight")
        _bn(block.depthwise.bn, state, f"{p}._bn1")
        _conv(block.project.conv.kernel, state, f"{p}._project_conv.weight")
        _bn(block.project.bn, state, f"{p}._bn2")
    _conv(layers[17].conv.kernel, state, "_conv_head.weight")
    _bn(layers[17].bn, state, "_bn1")
    if head:
        _set(layers[-1].weight, state["_fc.weight"], "_fc.weight")
        _set(layers[-1].bias, state["_fc.bias"], "_fc.bias")


MAPPERS = {"efficientnet_lite0": efficientnet_lite0}


def head_size(model) -> int:
    """Outputs of the model's classifier (its last layer, a Dense)."""
    return int(model.layers[-1].weight.shape[0])


def load_into(model, arch: str, state: dict, head: bool) -> None:
    try:
        MAPPERS[arch](model, state, head)
    except KeyError as e:
        raise CnnError(f"pretrained weights have no {e.args[0]!r} (not the {arch} they were registered for?)") from None
