"""ONNX Runtime (CPU) timing of cnn's own network, exported: what `cnn bench --vs onnxruntime` runs.

Unlike the torch and keras peers, which rebuild net1/net2 in their framework, this one times the
file `cnn export --format onnx` writes (`cnn bench` exports the network it times itself, with the
same weights): uint8 images in, normalisation inside, probabilities out, so a user sees what
deploying through ONNX gains or costs against `cnn`'s own inference step. Inference only.
`python benchmarks/onnxruntime_ref.py --model model.onnx --input-shape 28,28,1` prints one JSON line
(see _common.py). Needs `pip install -e .[export]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, serve, time_steps  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="onnxruntime timing of a cnn ONNX export (inference)")
    p.add_argument("--model", required=True, help="the .onnx file (cnn export --format onnx)")
    p.add_argument("--arch", default="?", help="the architecture's name, for the JSON line")
    p.add_argument("--input-shape", default="28,28,1", help="H,W,C")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--mode", choices=("infer",), default="infer")
    p.add_argument("--repeats", type=int, default=5, help="timed groups; images/s is their median")
    p.add_argument("--steps", type=int, default=5, help="steps per timed group")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (allocation, caches)")
    p.add_argument("--serve", action="store_true", help="time one block of N steps per line N on stdin")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="what cnn bench asks; the export runs fp32 (ONNX Runtime's CPU convolutions have no bf16)")
    args = p.parse_args()
    args.precision = "fp32"  # reported as run: `cnn bench --precision bf16` then skips this peer, saying why
    args.input_shape = tuple(int(v) for v in args.input_shape.split(","))
    return args


def main() -> None:
    args = parse_args()
    # ONNX Runtime's defaults: all graph optimisations, one intra-op thread per physical core.
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (args.batch_size, *args.input_shape), dtype=np.uint8)
    name = session.get_inputs()[0].name
    step = lambda: session.run(None, {name: x})  # noqa: E731 (blocks until the result exists)
    version = f"onnxruntime {ort.__version__}"
    if args.serve:
        return serve("onnxruntime", version, step, args)
    emit("onnxruntime", version, args, "infer", time_steps(step, args))


if __name__ == "__main__":
    main()
