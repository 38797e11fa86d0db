"""A run directory's files: the unit every command reads. `config.json` alone rebuilds model and preprocessing.

runs/train/<name>/  config.json  history.csv  metrics.json  calibration.json  curves.png  checkpoints/{last,best}.msgpack
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .. import locks
from ..checks import check_name, check_out
from ..errors import CnnError
from ..fsutil import write_text
from ..locks import Lock

CHECKPOINTS = ("best", "last")  # checkpoints/<name>.msgpack of every run

HISTORY_FIELDS = [
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "lr", "seconds", "elapsed_seconds", "images_per_s",
]


def new_run_dir(out: str, name: str) -> Path:
    """`out/name`, or `out/name-2`, `-3`, ... if taken (Ultralytics' auto-numbering)."""
    check_name(name)
    check_out(out)
    base = Path(out)
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        d = base / (name if i == 1 else f"{name}-{i}")
        try:
            d.mkdir()  # atomic claim: two runs started together never share a directory
            return d
        except FileExistsError:
            continue
    raise CnnError(f"too many runs named {name!r} in {base}")


def claim(run_dir: Path) -> Lock:
    """Lock an existing run directory for writing, then remove what a killed writer left behind
    (the temporary files of atomic writes that never reached their rename)."""
    lock = locks.acquire(run_dir, "a training run")
    for tmp in Path(run_dir).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return lock


def write_history(run_dir: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in HISTORY_FIELDS})
    write_text(run_dir / "history.csv", buf.getvalue())


def read_history(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "history.csv"
    if not p.is_file():
        return []
    with open(p) as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def read_config(run_dir: Path) -> dict:
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise CnnError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise CnnError(f"{p} is not valid JSON") from None


def checkpoint_file(run_dir, which: str) -> Path:
    """checkpoints/<which>.msgpack of a run (which: best or last), whether it exists or not."""
    return Path(run_dir) / "checkpoints" / f"{which}.msgpack"


def checkpoint_in(run_dir, which: str = "best") -> tuple[Path, str, int | None]:
    """(file, name, epoch) of the checkpoint a reader of `which` gets: `best` falls back on `last`
    (a run stopped before its first best was written); the epoch it holds, None where not recorded."""
    used = which if checkpoint_file(run_dir, which).is_file() else "last"
    if used == "best":
        p = Path(run_dir) / "metrics.json"
        epoch = json.loads(p.read_text()).get("best_epoch") if p.is_file() else None
    else:
        hist = read_history(run_dir)
        epoch = int(hist[-1]["epoch"]) if hist else None
    return checkpoint_file(run_dir, used), used, epoch


def latest_run(out: str = "runs/train") -> Path:
    """The most recently modified run directory that has a checkpoint."""
    base = Path(out)
    runs = [d for d in base.glob("*") if (d / "config.json").is_file() and (d / "checkpoints").is_dir()] if base.is_dir() else []
    if not runs:
        raise CnnError(f"no trained run in {base}/; train one with `cnn train` or pass a run directory")
    return max(runs, key=lambda d: (d / "config.json").stat().st_mtime)
