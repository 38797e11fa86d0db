"""Shared command line and timing loop of the peer reference benchmarks (torch_ref.py, keras_ref.py).

Each peer runs the same network as `cnn` (net1 or net2, see README.md here) on synthetic batches and
prints one JSON line per mode with the fields `cnn bench --json` prints. With `--serve` (what
`cnn bench --vs` uses) it warms up one mode, prints a ready line and then times one block of steps
per line read on stdin, so that `cnn bench` can alternate the frameworks' blocks (see `serve`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

ARCHS = ("net1", "net2")


def parse_args(framework: str) -> argparse.Namespace:
    """--arch, --input-shape H,W,C, --batch-size, --mode train|infer|both, --repeats, --steps, --warmup."""
    p = argparse.ArgumentParser(description=f"{framework} reference timing of cnn's net1/net2")
    p.add_argument("--arch", choices=ARCHS, default="net1")
    p.add_argument("--input-shape", default="28,28,1", help="H,W,C")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    p.add_argument("--repeats", type=int, default=5, help="timed groups; images/s is their median")
    p.add_argument("--steps", type=int, default=5, help="steps per timed group")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (graph building, caches)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: the framework's own mixed precision (Keras mixed_bfloat16, torch.autocast)")
    p.add_argument("--serve", action="store_true", help="time one block of N steps per line N on stdin (one mode)")
    args = p.parse_args()
    if args.serve and args.mode == "both":
        p.error("--serve times one mode: --mode train or --mode infer")
    args.input_shape = tuple(int(v) for v in args.input_shape.split(","))
    return args


def warm_up(run_step, args) -> float:
    """Run the untimed steps (at least one: graph building, caches); their seconds."""
    t0 = time.perf_counter()
    for _ in range(max(args.warmup, 1)):
        run_step()
    return time.perf_counter() - t0


def block(run_step, steps: int) -> float:
    """Seconds for `steps` calls of `run_step()` (which must block until its result exists)."""
    t = time.perf_counter()
    for _ in range(steps):
        run_step()
    return time.perf_counter() - t


def time_steps(run_step, args) -> dict:
    """Time `run_step()`: warm-up apart, then `repeats` groups of `steps`."""
    warmup_s = warm_up(run_step, args)
    rates = [args.steps * args.batch_size / block(run_step, args.steps) for _ in range(args.repeats)]
    return dict(images_per_s=statistics.median(rates), images_per_s_min=min(rates),
                images_per_s_max=max(rates), warmup_s=warmup_s, repeats=args.repeats, steps=args.steps)


def serve(framework: str, version: str, run_step, args) -> None:
    """Warm up, print {"framework", "version", "warmup_s", "precision"}, then for each line N on stdin run N steps
    and print {"seconds": ...}; end at end of input. The caller alternates the frameworks' blocks."""
    warmup_s = warm_up(run_step, args)
    print(json.dumps(dict(framework=framework, version=version, warmup_s=warmup_s, precision=args.precision)),
          flush=True)
    for line in sys.stdin:
        print(json.dumps(dict(seconds=block(run_step, int(line)))), flush=True)


def emit(framework: str, version: str, args, mode: str, timing: dict) -> None:
    """One JSON line in the shape `cnn bench --json` uses."""
    row = dict(framework=framework, version=version, arch=args.arch, input_shape=list(args.input_shape),
               batch_size=args.batch_size, mode=mode, precision=args.precision, **timing)
    print(json.dumps(row), flush=True)


def modes(args) -> tuple[str, ...]:
    return ("train", "infer") if args.mode == "both" else (args.mode,)
