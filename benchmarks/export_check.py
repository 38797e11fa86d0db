"""Every export format against `cnn predict`, on real test images: the goal check of `cnn export`.

    python benchmarks/export_check.py RUN_DIR IMAGES [--n 200] [--formats onnx,stablehlo,savedmodel,tflite]

IMAGES is a folder of image files (searched recursively, sorted; the first --n are taken), e.g.
MNIST test digits saved as PNG or ../shared/data/cats_vs_dogs/test. For each format the run is
exported (`cnn export`'s library call), loaded back in its runtime, and both it and the run
directory classify the same files through `predict_files` (what `cnn predict` runs), so the
export's own metadata does the preprocessing. Prints, per format, the largest difference of any
class probability, whether every top-1 agrees, and the export's time; then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("images")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--formats", default="onnx,stablehlo,savedmodel,tflite")
    args = p.parse_args()

    from cnncli.bench import cpu_info
    from cnncli.export import FORMATS, export
    from cnncli.exported import load_export
    from cnncli.predict import collect_inputs, predict_files
    from cnncli.runtime import tune_xla
    from cnncli.runs import load_run

    tune_xla()
    files = collect_inputs([args.images])[0]
    files = [files[i] for i in np.linspace(0, len(files) - 1, min(args.n, len(files))).astype(int)]  # every class
    k = len(load_run(args.run_dir).classes)

    def table(model):
        results = predict_files(model, files, top_k=k)
        order = model.classes
        probs = np.array([[dict((t["class"], t["probability"]) for t in r["top_k"])[c] for c in order]
                          for r in results])
        return probs, [r["class"] for r in results]

    run = load_run(args.run_dir)
    run.precision = "fp32"  # the goal's reference: `cnn predict` in fp32 (auto may time bf16 faster here)
    want, want_top = table(run)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for fmt in args.formats.split(","):
            t = time.perf_counter()
            r = export(args.run_dir, fmt, out=Path(d) / f"model{FORMATS[fmt].suffix}")
            seconds = time.perf_counter() - t
            got, got_top = table(load_export(r["file"]))
            rows.append(dict(format=fmt, images=len(files), max_abs_diff=float(np.abs(got - want).max()),
                             top1_agree=int(sum(a == b for a, b in zip(got_top, want_top))), export_s=round(seconds, 1)))
            print(f"{fmt:11s} {len(files)} images: max |p - p_predict| {rows[-1]['max_abs_diff']:.2e}, "
                  f"top-1 agrees on {rows[-1]['top1_agree']}/{len(files)}, exported and checked in {seconds:.1f} s")
    cpu = cpu_info()
    print(f"run {args.run_dir}; cpu: {cpu['model']}, {cpu['cores']} cores")
    print(json.dumps(dict(run=args.run_dir, rows=rows, cpu=cpu)))


if __name__ == "__main__":
    main()
