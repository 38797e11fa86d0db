"""`cnn summary`: an architecture's layers, shapes, parameters and FLOPs, as Keras prints them."""

from __future__ import annotations

from typing import Annotated, Optional

from ..errors import CnnError
from ..checks import Range
from .options import Activation, Arch, Dropout, ImageSize, Json, config_option, option


def summary(
    arch: Arch,
    dataset: Annotated[Optional[str], config_option(
        "dataset", help="Take shape and classes from this data set (nothing is loaded).")] = None,
    input_shape: Annotated[Optional[str], option("--input-shape", metavar="H,W,C",
                                                 help="The input's shape, e.g. 28,28,1 (instead of --dataset).",
                                                 unset="the data set's")] = None,
    classes: Annotated[Optional[int], option("--classes", help="Number of classes (with --input-shape, or for a folder).",
                                             rule=Range(2), metavar="K", unset="the data set's")] = None,
    image_size: ImageSize = None,
    activation: Activation = None,
    dropout: Dropout = None,
    json_out: Json = False,
) -> None:
    """Layers, output shapes, parameters, memory and FLOPs of an architecture, as Keras prints them."""
    from ..console import Out
    from ..models.registry import get_arch

    get_arch(arch)  # an unknown name fails before JAX is imported
    from ..models.summary import dataset_input, parse_shape, summarize

    if (dataset is None) == (input_shape is None):
        raise CnnError("give either --dataset NAME or --input-shape H,W,C (with --classes K)")
    if dataset is not None:
        shape, k = dataset_input(dataset, arch, image_size, classes)
    else:
        if classes is None:
            raise CnnError("--input-shape needs --classes K")
        shape, k = parse_shape(input_shape), classes
    s = summarize(arch, shape, k, activation=activation, dropout=dropout)
    out = Out(json=json_out)
    if json_out:
        out.emit_json(s)
        return
    out.print(f"Model: {s['arch']} ({s['source']}): {s['description']}")
    out.print(f"Input {'x'.join(map(str, shape))}, {k} classes"
              + (", one sigmoid unit (binary head)" if s["binary_head"] else ""))
    rows = [[r["name"], r["type"], str(tuple(r["output_shape"])), r["params"], r["macs"]] for r in s["layers"]]
    out.table(None, ["layer", "type", "output shape", "params", "MACs"], rows)
    out.print(f"Total params: {s['total_params']:,} ({s['param_memory']})")
    out.print(f"Trainable params: {s['trainable_params']:,}")
    out.print(f"Non-trainable params: {s['non_trainable_params']:,}")
    out.print(f"Per image, forward: {s['macs']:,} MACs, {s['flops']:,} FLOPs")
    out.print(s["counting"])
