"""`cnn predict` and `cnn explain`: classify image files with a trained run, and show why."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import CnnError
from .options import Invert, Json, Model, ModelOrExport, TopK, option


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively, sorted).",
                                                 metavar="IMAGE...")],
    model: ModelOrExport = None,
    top_k: TopK = 3,
    invert: Invert = "auto",
    json: Annotated[bool, option("--json", help="Print a JSON list on stdout, one entry per file.", is_flag=True)] = False,
    csv: Annotated[bool, option("--csv", help="Print CSV on stdout: file,class,probability,top_k,note,error.",
                                is_flag=True)] = False,
):
    """Classify images with a trained run; a bad file gets one error line and the others still run."""
    from .. import calibrate
    from ..console import Out
    from ..exported import load_model
    from ..predict import collect_inputs, csv_text, describe, predict_files

    if json and csv:
        raise CnnError("choose one of --json and --csv")
    o = Out(json=json or csv)
    files, skipped = collect_inputs(images)
    if skipped:
        print(f"note: skipped {skipped} file(s) without an image extension in the folders given", file=sys.stderr)
    if not files:
        raise CnnError("no image files found in " + ", ".join(map(str, images)))
    run = load_model(model)
    if top_k > len(run.classes):  # what is shown must match what is said
        print(f"note: the model has {len(run.classes)} classes; showing all {len(run.classes)}, not top {top_k}",
              file=sys.stderr)
        top_k = len(run.classes)
    if calibrate.is_unsure(0.0, run.calibration) is None:  # said once, not on every row
        print(f"note: {calibrate.summary_line(run.calibration)}; no prediction is marked unsure", file=sys.stderr)
    results = predict_files(run, files, top_k=top_k, invert=invert)
    failed = [r for r in results if "error" in r]
    if json:
        o.emit_json(results)
    elif csv:
        sys.stdout.write(csv_text(results))
    else:
        for r in failed:
            print(f"{r['file']}: {r['error']}", file=sys.stderr)
        rows = [[r["file"], r["class"], describe(r),
                 ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"]), r["note"]]
                for r in results if "error" not in r]
        if rows:
            o.table(None, ["file", "class", "P(class 1) -> class" if run.binary_head else "probability",
                           f"top {top_k}", "note"], rows, justify_numbers=False)
    if failed:
        print(f"{len(failed)} of {len(results)} file(s) could not be classified", file=sys.stderr)
        raise typer.Exit(1)


def explain(
    image: Annotated[Path, typer.Argument(help="The image to explain.", metavar="IMAGE")],
    model: Model = None,
    out: Annotated[Optional[str], option("--out", metavar="FILE",
                                         help="Figure to write, in the format its extension names (.png, .jpg, .pdf, "
                                              ".svg, ...), or a folder (default <run_dir>/explain/<stem>_saliency.png).")
                   ] = None,
    invert: Invert = "auto",
    json: Json = False,
):
    """Saliency map: |d predicted-class logit / d pixel|, beside the image and as an overlay, in one PNG."""
    from ..console import Out
    from ..explain import explain as explain_image
    from ..exported import is_export
    from ..runs import latest_run, load_run

    o = Out(json=json)
    if model is not None and is_export(model):
        raise CnnError(f"{model} is an export: saliency maps need the run directory (its gradients)")
    run = load_run(model or latest_run())
    r = explain_image(run, image, out, invert)
    if json:
        o.emit_json(r)
    else:
        note = f" ({r['note']})" if r["note"] else ""
        o.print(f"{r['file']}: {r['class']} {r['probability']:.4f}{note}")
        o.print(f"wrote {r['png']}")
