"""Per-epoch logs that other tools read: `metrics.jsonl` and TensorBoard event files.

    runs/train/<name>/metrics.jsonl             one JSON object per epoch (Keras' CSVLogger names)
    runs/train/<name>/events.out.tfevents.*     `tensorboard --logdir runs` shows every run

The event files are written by tensorboardX (protobuf only, no TensorFlow). metrics.jsonl is
rewritten whole, atomically, after every epoch from the run's history, so it always holds exactly
the epochs the checkpoint holds, also after `--resume`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fsutil import write_text

# metrics.jsonl key -> history row key, in line order.
JSONL_FIELDS = {
    "epoch": "epoch", "loss": "train_loss", "accuracy": "train_accuracy", "val_loss": "val_loss",
    "val_accuracy": "val_accuracy", "lr": "lr", "seconds": "seconds", "images_per_s": "images_per_s",
}
# TensorBoard tag -> history row key. "loss/..." and "accuracy/..." group train and val in one section.
SCALARS = {
    "loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_accuracy",
    "accuracy/val": "val_accuracy", "lr": "lr", "speed/images_per_s": "images_per_s",
    "speed/seconds_per_epoch": "seconds",
}


def jsonl_text(history: list[dict]) -> str:
    return "".join(json.dumps({k: r.get(src) for k, src in JSONL_FIELDS.items()}) + "\n" for r in history)


def read_jsonl(run_dir) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


class EpochLog:
    """`with EpochLog(run_dir, first_epoch) as log: ... log.write(history)` after every epoch."""

    def __init__(self, run_dir: Path, first_epoch: int = 1):
        self.run_dir, self.first_epoch = Path(run_dir), first_epoch
        self._tb = None

    def __enter__(self):
        from tensorboardX import SummaryWriter

        # purge_step: on --resume, TensorBoard drops any event logged at or after this epoch by the
        # interrupted process, so an epoch never shows twice. The suffix keeps a resumed run's file apart
        # from the first one (the names otherwise differ only by the second they were opened in).
        resumed = self.first_epoch > 1
        self._tb = SummaryWriter(logdir=str(self.run_dir), purge_step=self.first_epoch if resumed else None,
                                 filename_suffix=f".from-epoch-{self.first_epoch}")
        return self

    def write(self, history: list[dict]) -> None:
        """Record the newest epoch of `history` (metrics.jsonl gets all of them)."""
        write_text(self.run_dir / "metrics.jsonl", jsonl_text(history))
        row = history[-1]
        for tag, key in SCALARS.items():
            if row.get(key) is not None:
                self._tb.add_scalar(tag, row[key], int(row["epoch"]))
        self._tb.flush()

    def __exit__(self, *exc):
        self._tb.close()
        return False
