"""`cnn export` and `cnn serve`: a trained run as a file for another runtime, or behind HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Json

Opt = typer.Option
RunArg = Annotated[Optional[Path], typer.Argument(help="Run directory (default: the newest under runs/train).")]
Checkpoint = Annotated[str, Opt("--checkpoint", help="best or last.")]


def export(
    run: RunArg = None,
    fmt: Annotated[str, Opt("--format", help="onnx, stablehlo, savedmodel or tflite.")] = "onnx",
    out: Annotated[Optional[Path], Opt("--out", help="File (a directory for savedmodel) to write "
                                       "(default <run>/export/<checkpoint>.<format>).")] = None,
    checkpoint: Checkpoint = "best",
    precision: Annotated[str, Opt("--precision", help="fp32, or bf16 (stablehlo, savedmodel).")] = "fp32",
    json: Json = False,
):
    """Write the model as ONNX, StableHLO, SavedModel or TFLite, with its preprocessing, and check it."""
    from ..console import Out
    from ..export import export as export_run
    from ..train import latest_run

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
    run: Annotated[Optional[Path], typer.Argument(
        help="Run directory, or an export from `cnn export` (default: the newest run).")] = None,
    host: Annotated[str, Opt("--host", help="Interface to listen on; 0.0.0.0 for all.")] = "127.0.0.1",
    port: Annotated[int, Opt("--port", min=1, max=65535, help="TCP port.")] = 8000,
    max_batch: Annotated[int, Opt("--max-batch", min=1, max=1024,
                                  help="Images of concurrent requests run as one call, at most.")] = 32,
    max_wait_ms: Annotated[float, Opt("--max-wait-ms", min=0, max=1000,
                                      help="How long a request waits for others to join its batch.")] = 5.0,
    max_upload_mb: Annotated[float, Opt("--max-upload-mb", min=0.001, help="Largest request body accepted.")] = 20.0,
    checkpoint: Checkpoint = "best",
):
    """Serve the model over HTTP: POST /predict, POST /explain, GET /health, GET /model, and a page at /."""
    from ..errors import CnnError
    from ..export import load_model
    from ..serve import require, serve as serve_model

    require()
    if checkpoint not in ("best", "last"):
        raise CnnError(f"--checkpoint must be best or last, not {checkpoint!r}")
    model = load_model(run, checkpoint)
    serve_model(model, host=host, port=port, checkpoint=checkpoint, max_batch=max_batch, max_wait_ms=max_wait_ms,
                max_upload_mb=max_upload_mb, say=lambda line: print(line, flush=True))


def _size(path: Path) -> str:
    n = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return f"{n / 2**20:.1f} MB"
