"""Layers as candidate formulations; which one runs is measured on the machine at hand (`tuner`).

Each op (a convolution's forward pass, input gradient and kernel gradient; max pooling forward and
backward; a dense layer's kernel gradient) has a table of candidates, plain functions with one
signature, the first of which is XLA's own op. While a model is traced, `_pick` asks the tuner for
the fastest candidate for that op, shape and dtype; the tuner times them once on this CPU and
caches the choice. Why candidates at all: on a 2-core AVX2 EPYC each of these forms beat XLA's op
(e.g. the gradient of `reduce_window` max pooling cost more than the network's largest
convolution; a strided convolution's input gradient was ~75% products with zeros), while on an
AVX-512/AMX Xeon the same forms lost 10-50% (issue #29). docs/performance.md has the history.

Mixed precision: with bf16 operands every product accumulates in fp32
(`preferred_element_type`) and is rounded to bf16 once: on AMX a bf16 dot returning bf16 runs no
faster than fp32 (~130 GFLOP/s) while with fp32 accumulation it reaches 440-730.

Under `tuner.plain()` (`reference_ops`) every layer is the plain `lax` op with no custom gradient:
what `summary` counts and what an exporter can convert.


The forms live by op: convolution in conv.py, the dense product in dense.py, pooling in pooling.py,
what they share (geometry, `_pick`) in ops.py. This module is the layers' public face.
"""

from __future__ import annotations

from .. import tuner
from .conv import Conv, conv2d, conv2d_act, conv_general_dilated
from .dense import dense
from .ops import ACTIVATIONS, activate
from .pooling import avg_pool, max_pool

reference_ops = tuner.plain  # the switch for plain ops (summary, export)

__all__ = ["ACTIVATIONS", "Conv", "activate", "avg_pool", "conv2d", "conv2d_act", "conv_general_dilated", "dense",
           "max_pool", "reference_ops"]
