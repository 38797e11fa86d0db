"""Transfer learning: a model started from another run's weights (`--init-from`) or from published
pretrained weights (`--pretrained`, cnncli/pretrained), and which of its parameters train (`--freeze`)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from ..errors import CnnError
from ..runs import checkpoint, rundir


def init_from(src: str, params, rest, classes=None, binary: bool = False):
    """Copy every layer whose path and shape match from another run (transfer learning). A classifier
    head of another size starts from the source head's rows of the same class names when it has them
    all (CIFAR-10's cat and dog rows for cats vs dogs; see `head_rows`), else it is re-initialised."""
    src_dir = Path(src)
    meta, arrays = checkpoint.load(rundir.checkpoint_in(src_dir, "best")[0])
    weights = "ema" if meta.get("use_ema") else "params"  # what the source run evaluated and kept
    copied, fresh = 0, []

    def take(prefix, tree, source_prefix):
        nonlocal copied
        flat = checkpoint.flatten(tree)
        for k, v in flat.items():
            src_v = arrays.get(f"{source_prefix}/{k}")
            if src_v is not None and src_v.shape == v.shape:
                flat[k] = src_v
                copied += 1
            elif prefix == "params":
                fresh.append(k)
        if prefix == "params" and classes is not None:
            fresh[:] = _head_by_class(flat, fresh, arrays, source_prefix, src_dir, list(classes), binary)
        return checkpoint.unflatten_into(tree, flat, src)

    params, rest = take("params", params, weights), take("rest", rest, "rest")
    if not copied:
        raise CnnError(f"nothing in {src} matches this architecture; --init-from needs a run of the same arch")
    note = f"initialised from {src}: {copied} arrays copied"
    if fresh:
        note += f"; re-initialised: {', '.join(sorted(set(k.rsplit('/', 1)[0] for k in fresh)))}"
    return params, rest, note


def _head_by_class(flat: dict, fresh: list, arrays: dict, prefix: str, src_dir: Path, classes, binary: bool) -> list:
    """Fill the re-initialised head (weight and bias of the last layer) from the source head's rows of
    the same classes, in place; returns what is still fresh."""
    head = [k for k in fresh if k.rsplit("/", 1)[-1] in ("weight", "bias")]
    layers = {k.rsplit("/", 1)[0] for k in head}
    last = max(flat, key=_layer_key)  # a key of the last layer with parameters
    if len(layers) != 1 or last.rsplit("/", 1)[0] not in layers:
        return fresh
    try:
        src_classes = [c.lower() for c in rundir.read_config(src_dir)["data"]["classes"]]
        rows = [src_classes.index(c.lower()) for c in classes]
    except (CnnError, KeyError, ValueError):
        return fresh  # classes the source never had: nothing to start from
    filled = []
    for k in head:
        src_v = arrays.get(f"{prefix}/{k}")
        if src_v is None:
            continue
        v = head_rows(src_v, rows, binary)
        if v.shape == flat[k].shape:
            flat[k], filled = v.astype(flat[k].dtype), filled + [k]
    return fresh if len(filled) != len(head) else [k for k in fresh if k not in filled]


def head_rows(source, rows: list[int], binary: bool):
    """A head's weight (out, in) or bias (out,) for classes `rows` of the source head's outputs. A one-unit
    sigmoid head for two classes gets row b - row a: sigmoid(z_b - z_a) is the source's softmax over
    just those two classes."""
    source = np.asarray(source)
    return (source[rows[1]] - source[rows[0]])[None] if binary else source[rows]


def _layer_key(path: str):
    return tuple(int(p) if p.isdigit() else p for p in path.split("/")[:-1])


def load_pretrained(model, arch: str, name: str, weights_file: str | None, num_classes: int) -> str:
    """Put the published weights `name` of `arch` into `model` (its head too when the class count is
    theirs); returns the note to print."""
    from .. import pretrained

    spec = pretrained.get(arch, name)
    source = pretrained.load(model, spec, weights_file)
    kept = num_classes == len(spec.classes())
    return (f"initialised from the {name} weights of {arch} ({source.name}); "
            + ("their head kept" if kept else f"a new head for {num_classes} classes"))


def pretrained_normalization(arch: str, name: str, channels: int) -> tuple[tuple, tuple]:
    """(mean, std) on [0, 1] pixels the weights were trained with."""
    from .. import pretrained

    spec = pretrained.get(arch, name)
    if channels != len(spec.mean):
        raise CnnError(f"the {name} weights of {arch} take {len(spec.mean)}-channel images; the data set's have "
                       f"{channels}")
    return tuple(spec.mean), tuple(spec.std)


def first_trained_layer(model, freeze: str | None) -> int:
    """The index of the first layer that trains under `--freeze`: "features" = the head (the last layer
    with parameters), N = layer N; 0 without --freeze."""
    from flax import nnx

    if not freeze:
        return 0
    with_params = [i for i, layer in enumerate(model.layers) if jax.tree.leaves(nnx.state(layer, nnx.Param))]
    if freeze == "features":
        return with_params[-1]
    first = int(freeze)
    if first > with_params[-1]:
        raise CnnError(f"--freeze {freeze}: the model's last layer with parameters is layer {with_params[-1]} "
                       f"(`cnn summary` counts from 0); nothing would train")
    return first


def trainable_mask(params, first: int):
    """True for the parameters of layers `first` and up (every architecture is a SeqNet: `layers/<i>/...`)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: _layer_key(checkpoint.path_str(p))[1] >= first, params)


def head_mask(params):
    """True for the classifier head's parameters (trained), False for the features (frozen).

    The head is the last layer that has parameters: every architecture is a `SeqNet` whose
    parameters live under `layers/<index>/`.
    """
    def layer_of(path):
        return _layer_key(checkpoint.path_str(path))

    head = max(layer_of(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    return jax.tree_util.tree_map_with_path(lambda p, _: layer_of(p) == head, params)
