"""`cnn export` and `cnn serve`: a trained run as a file for another runtime, or behind HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from ..checks import EXPORT_FORMATS, EXPORT_PRECISIONS, Range, choice
from ..runs.rundir import CHECKPOINTS
from .options import Json, argument, option

RunArg = Annotated[Optional[Path], argument("Run directory (default: the newest under runs/train).", metavar="RUN_DIR")]
Checkpoint = Annotated[str, option("--checkpoint", help="Which weights.", rule=choice(CHECKPOINTS))]


def export(
    run: RunArg = None,
    fmt: Annotated[str, option("--format", help="What to write.", rule=choice(EXPORT_FORMATS))] = "onnx",
    out: Annotated[Optional[Path], option("--out", help="File (a directory for savedmodel) to write.", metavar="PATH",
                                          unset="<run>/export/<checkpoint>.<format>")] = None,
    checkpoint: Checkpoint = "best",
    precision: Annotated[str, option("--precision", help="What the graph computes in (bf16: stablehlo, savedmodel).",
                                     rule=choice(EXPORT_PRECISIONS))] = "fp32",
    json: Json = False,
):
    """Write the model as ONNX, StableHLO, SavedModel or TFLite, with its preprocessing, and check it."""
    from ..console import Out
    from ..export import export as export_run
    from ..runs import latest_run

    o = Out(json=json)
    with o.console.status(f"exporting {fmt} (converting, then checking it in its runtime)"):
        r = export_run(run or latest_run(), fmt, out, checkpoint, precision)
    if json:
        o.emit_json(r)
        return
    o.print(f"wrote {r['file']} ({fmt}, {r['precision']}, {r['checkpoint']} checkpoint, {_size(Path(r['file']))})")
    o.print(f"metadata: {'inside the file' if r['metadata'] == r['file'] else r['metadata']}")
    o.print(f"checked: loaded back, its probabilities within {r['max_abs_diff']:.1g} of the run's")


def serve(
    run: Annotated[Optional[Path], argument("Run directory, or an export from `cnn export` (default: the newest run).",
                                            metavar="RUN_DIR|EXPORT")] = None,
    host: Annotated[str, option("--host", help="Interface to listen on; 0.0.0.0 for all.", metavar="ADDRESS")
                     ] = "127.0.0.1",
    port: Annotated[int, option("--port", help="TCP port.", rule=Range(1, 65535), metavar="PORT")] = 8000,
    max_batch: Annotated[int, option("--max-batch", rule=Range(1, 1024), metavar="N",
                                     help="Images of concurrent requests run as one call, at most.")] = 32,
    max_wait_ms: Annotated[float, option("--max-wait-ms", rule=Range(0, 1000), metavar="MS",
                                         help="How long a request waits for others to join its batch.")] = 5.0,
    max_upload_mb: Annotated[float, option("--max-upload-mb", rule=Range(0, lo_open=True), metavar="MB",
                                           help="Largest request body accepted.")] = 20.0,
    checkpoint: Checkpoint = "best",
):
    """Serve the model over HTTP: POST /predict, POST /explain, GET /health, GET /model, and a page at /."""
    from ..exported import load_model
    from ..serve import require, serve as serve_model

    require()
    model = load_model(run, checkpoint)
    serve_model(model, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
                max_upload_mb=max_upload_mb, say=lambda line: print(line, flush=True))


def _size(path: Path) -> str:
    n = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return f"{n / 2**20:.1f} MB"
