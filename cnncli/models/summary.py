"""Keras-style model summaries, parameter counts and FLOPs, all read off the real module.

Output shapes and multiply-adds come from tracing each layer of the `SeqNet` with
`jax.make_jaxpr` on an abstract model (`nnx.eval_shape`): no parameter is allocated, so even
VGG-16's 138M parameters are summarised at once, and the numbers cannot drift from the code.
"""

from __future__ import annotations

import math
from collections import Counter

import jax
import jax.numpy as jnp
from flax import nnx

from ..errors import CnnError
from .blocks import Frozen
from .layers import reference_ops
from .registry import abstract_model, get_arch

COUNTING = ("MACs are the multiply-adds of convolutions (H_out*W_out*C_out*K*K*C_in) and dense layers "
            "(in*out), read off the traced computation at batch 1; biases, BatchNorm, activations, pooling "
            "and residual additions are not counted. FLOPs = 2 x MACs, forward pass, per image; "
            "a training step costs about 3x the forward FLOPs.")


def _leaves(model, kind) -> list:
    return jax.tree.leaves(nnx.state(model, kind))


def count_params(model) -> tuple[int, int, int]:
    """(total, trainable, non_trainable): nnx.Param is trainable, BatchNorm's nnx.BatchStat and Frozen are not.

    Works on concrete and abstract (eval_shape) models alike; RNG state is not a parameter.
    """
    trainable = sum(math.prod(x.shape) for x in _leaves(model, nnx.Param))
    non_trainable = sum(math.prod(x.shape) for x in _leaves(model, (nnx.BatchStat, Frozen)))
    return trainable + non_trainable, trainable, non_trainable


def param_bytes(model) -> int:
    """Bytes taken by the parameters and BatchNorm statistics at their dtypes."""
    leaves = _leaves(model, (nnx.Param, nnx.BatchStat, Frozen))
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)


def human_bytes(n: int) -> str:
    """1024-based units, as Keras prints them (Keras writes 'MB' for MiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def _subjaxprs(params: dict):
    for v in params.values():
        for item in v if isinstance(v, (tuple, list)) else (v,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item.jaxpr


def _macs(jaxpr) -> int:
    """Multiply-adds of the convolutions and matrix products in `jaxpr` (and its sub-jaxprs)."""
    total = 0
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0].aval.shape if eqn.outvars else ()
        if eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape
            out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            # Each output element sums K*K*C_in(/groups) products: the kernel's size per output channel.
            total += math.prod(out) * math.prod(kernel) // kernel[out_feature_dim]
        elif eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(out) * math.prod(lhs[d] for d in contract)
        total += sum(_macs(sub) for sub in _subjaxprs(eqn.params))
    return total


def trace(module, x: jax.ShapeDtypeStruct) -> tuple[jax.ShapeDtypeStruct, int]:
    """Output shape and multiply-adds of `module(x)`; the module's variables may be abstract."""
    graphdef, state = nnx.split(module)

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    with reference_ops():  # count each convolution as one, whatever form the fast path takes
        closed, out = jax.make_jaxpr(apply, return_shape=True)(state, x)
    return out, _macs(closed.jaxpr)


def _image(input_shape) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)


def summarize(name: str, input_shape: tuple[int, int, int], num_classes: int, *,
              activation: str | None = None, dropout: float | None = None) -> dict:
    """Everything `cnn summary` prints, as a JSON-ready dict (one row per layer, then the totals)."""
    spec = get_arch(name)
    model = abstract_model(name, input_shape, num_classes, activation=activation, dropout=dropout)
    model.eval()  # Dropout off, BatchNorm on running statistics: the inference computation
    x, rows, seen = _image(input_shape), [], Counter()
    for layer in model.layers:
        x, macs = trace(layer, x)
        total, trainable, _ = count_params(layer)
        n = seen[layer.kind]
        seen[layer.kind] += 1
        rows.append(dict(name=layer.kind if n == 0 else f"{layer.kind}_{n}", type=layer.describe(),
                         output_shape=list(x.shape[1:]), params=total, trainable=trainable, macs=macs))
    total, trainable, non_trainable = count_params(model)
    macs = sum(r["macs"] for r in rows)
    nbytes = param_bytes(model)
    return dict(
        arch=name, source=spec.source, description=spec.description,
        input_shape=list(input_shape), num_classes=num_classes, output_shape=list(x.shape[1:]),
        binary_head=spec.binary_head and num_classes == 2, layers=rows,
        total_params=total, trainable_params=trainable, non_trainable_params=non_trainable,
        param_bytes=nbytes, param_memory=human_bytes(nbytes),
        macs=macs, flops=2 * macs, counting=COUNTING,
    )


def macs_per_image(model, input_shape: tuple[int, int, int]) -> int:
    """Forward multiply-adds of `model` for one image of `input_shape` (H, W, C)."""
    return trace(model, _image(input_shape))[1]


def flops_per_image(name: str, input_shape: tuple[int, int, int], num_classes: int) -> int:
    """Forward FLOPs (2 x MACs) of architecture `name` per image; training costs about 3x this."""
    model = abstract_model(name, input_shape, num_classes)
    model.eval()
    return 2 * macs_per_image(model, input_shape)


def parse_shape(text: str) -> tuple[int, int, int]:
    """'28,28,1' (or '28x28x1') -> (28, 28, 1)."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise CnnError(f"--input-shape takes three positive integers H,W,C; got {text!r}")
    return shape


def dataset_input(dataset: str, arch: str, image_size: int | None = None,
                  num_classes: int | None = None) -> tuple[tuple[int, int, int], int]:
    """Input shape and class count of `dataset` from the data registry, without loading any image.

    An explicit `image_size` resizes any data set to a square (as `load_dataset` does); photos of
    varied size otherwise take the architecture's default size, else the data set's.
    """
    from ..data import get_spec

    spec = get_spec(dataset)
    h, w, c = spec.shape
    if image_size:
        h = w = image_size
    elif h is None or w is None:
        h = w = get_arch(arch).defaults.get("image_size") or spec.default_size
    k = num_classes or spec.num_classes
    if c is None or not k:
        raise CnnError(f"data set {spec.name} lists its classes and channels only when loaded; "
                       "give --input-shape H,W,C and --classes K")
    return (h, w, c), k
