"""`cnn evaluate`: score a run on a split or another data set; a CI gate with --min-accuracy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..checks import NON_NEGATIVE, choice
from ..runs.rundir import CHECKPOINTS
from .options import Json, MinAccuracy, option


def evaluate(
    run_dir: Annotated[Optional[Path], typer.Argument(help="Run directory (default: the newest under --out).",
                                                      metavar="RUN_DIR")] = None,
    split: Annotated[Optional[str], option("--split", metavar="[test|val|train|all]",
                                           help="Default: all for a plain <dir>/<class>/ folder given with --dataset, "
                                                "else test.")] = None,
    dataset: Annotated[Optional[str], option("--dataset", help="Evaluate on another data set of the same image shape.",
                                             metavar="NAME|DIR", unset="the run's own")] = None,
    checkpoint: Annotated[str, option("--checkpoint", help="Which weights to score.", rule=choice(CHECKPOINTS))] = "best",
    predictions: Annotated[Optional[Path], option("--predictions", metavar="CSV",
                                                  help="Write a CSV, one row per image: index, split, file, true, "
                                                       "predicted, probability, correct.", unset="none")] = None,
    mistakes: Annotated[Optional[Path], option("--mistakes", metavar="PNG",
                                               help="With --predictions: where the grid of the most confident "
                                                    "mistakes goes (default: beside the CSV, <stem>_mistakes.png).")
                        ] = None,
    min_accuracy: MinAccuracy = None,
    out: Annotated[str, option("--out", help="Parent folder of run directories, to find the newest.",
                               metavar="DIR")] = "runs/train",
    reframe: Annotated[bool, option("--reframe", is_flag=True, help="Score the split's photos re-framed (padded, "
                                    "cropped, rotated, ...): accuracy per kind against the plain split's.")] = False,
    tta_flip: Annotated[Optional[bool], option("--tta-flip/--no-tta-flip", is_flag=True, unset="the run's own",
                                               help="Average predictions with the mirror image, or not.")] = None,
    tta_shift: Annotated[Optional[int], option("--tta-shift", metavar="N", rule=NON_NEGATIVE, unset="the run's own",
                                               help="Also average over copies shifted by +-N pixels (0 = off).")] = None,
    tta_scales: Annotated[Optional[str], option("--tta-scales", metavar="LIST", unset="the run's own",
                                                help="Also average over views at these shares of the side "
                                                     "(\"\" = none).")] = None,
    json: Json = False,
):
    """Loss, accuracy, classification report and confusion matrix of a run on a split of a data set.

    Writes confusion_matrix.png, errors.png and report.json into the run directory (with a suffix
    such as _val or _last for other splits, data sets or checkpoints). The --tta options replace the
    run's test-time views, to choose them on the validation split (files then get a _views-... suffix).
    """
    from ..console import Out
    from ..evaluate import evaluate as evaluate_run
    from ..evaluate import report_rows
    from ..runs import latest_run

    o = Out(json=json)
    if reframe:
        return _print_reframe(o, run_dir or latest_run(out), split or "test", dataset, checkpoint, json)
    tta = {k: v for k, v in (("tta_flip", tta_flip), ("tta_shift", tta_shift), ("tta_scales", tta_scales))
           if v is not None}
    ev = evaluate_run(run_dir or latest_run(out), split, dataset, checkpoint, predictions=predictions,
                      mistakes=mistakes, tta=tta)
    for note in ev.notes:
        o.print(f"note: {note}")
    if json:
        o.emit_json(ev.to_dict())
    else:
        epoch = "" if ev.epoch is None else f", epoch {ev.epoch}"
        o.print(f"{ev.run_dir}: {ev.dataset}, {ev.scored}, {ev.checkpoint} checkpoint{epoch}; views: {ev.views}")
        o.print(f"loss {ev.loss:.4f}  accuracy {ev.accuracy:.4f}")
        o.table("classification report", ["", "precision", "recall", "f1-score", "support"],
                report_rows(ev.report, ev.classes))
        o.table("confusion matrix (rows: true class, columns: predicted)", ["true \\ pred", *ev.classes],
                [[c, *row] for c, row in zip(ev.classes, ev.confusion_matrix)])
        o.print("wrote " + ", ".join(ev.files.values()))
    if min_accuracy is not None and ev.accuracy < min_accuracy:
        print(f"accuracy {ev.accuracy:.4f} is below --min-accuracy {min_accuracy}", file=sys.stderr)
        raise typer.Exit(1)


def _print_reframe(o, run_dir, split, dataset, checkpoint, json_out) -> None:
    """`cnn evaluate --reframe`: one row per kind of re-framing (see cnncli/reframe.py)."""
    from ..errors import CnnError
    from ..reframe import reframe_run

    if dataset is not None:
        raise CnnError("--reframe re-frames the run's own split; drop --dataset")
    r = reframe_run(run_dir, split, checkpoint=checkpoint)
    for note in r["notes"]:
        o.print(f"note: {note}")
    if json_out:
        o.emit_json(r)
        return
    unsure = "unsure_share" in r["rows"][0]
    rows = [[x["kind"], x["description"], x["n"], f"{100 * x['accuracy']:.2f}%", f"{100 * x['error']:.2f}%",
             f"{100 * x['error_vs_plain']:+.2f}", "" if x["error_ratio"] is None else f"{x['error_ratio']:.2f}x"]
            + ([f"{100 * x['unsure_share']:.1f}%"] if unsure else []) for x in r["rows"]]
    o.table(f"{r['run_dir']}: {r['dataset']} {r['split']} split re-framed ({r['images']})",
            ["kind", "re-framing", "images", "accuracy", "error", "vs plain (points)", "error ratio"]
            + (["unsure"] if unsure else []), rows, justify_numbers=False)
    o.print("wrote " + ", ".join(r["files"].values()))
