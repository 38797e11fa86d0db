"""Training progress: a Rich bar with live loss, accuracy, images/s and ETA on a terminal;
one plain line per epoch elsewhere (CI logs, pipes). With `--json` it all goes to stderr."""

from __future__ import annotations

import contextlib

from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

from ..console import Out


def epoch_line(row: dict, epochs: int) -> str:
    """The fixed-width line printed after every epoch (a table row on a terminal, a log line elsewhere)."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    return (f"epoch {row['epoch']:>3}/{epochs:<3} loss {f(row['train_loss'], '.4f')}  acc {f(row['train_accuracy'], '.4f')}"
            f"  val_loss {f(row['val_loss'], '.4f')}  val_acc {f(row['val_accuracy'], '.4f')}"
            f"  lr {row['lr']:.2e}  {row['seconds']:7.1f}s  {row['images_per_s']:8,.0f} img/s")


class Progress:
    def __init__(self, out: Out, quiet: bool = False):
        self.out = out
        self.quiet = quiet
        self._bar = None
        self._task = None
        self.epochs = 0

    def note(self, msg: str) -> None:
        if not self.quiet:
            self.out.print(msg)

    @contextlib.contextmanager
    def session(self, epochs: int, steps_per_epoch: int, start_epoch: int = 0):
        self.epochs, self.steps = epochs, steps_per_epoch
        if self.out.is_tty and not self.quiet:
            self._bar = RichProgress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.4f} {task.fields[ips]:,.0f} img/s"),
                TimeRemainingColumn(),
                console=self.out.console,
                transient=True,
            )
            self._task = self._bar.add_task("train", total=steps_per_epoch, epoch=start_epoch + 1, epochs=epochs,
                                            loss=0.0, acc=0.0, ips=0.0)
            with self._bar:
                yield self
            self._bar = None
        else:
            yield self

    def start_epoch(self, epoch: int, start_step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=start_step, epoch=epoch)

    def update(self, step: int, loss: float, acc: float, images: float, seconds: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=loss, acc=acc, ips=images / max(seconds, 1e-9))

    def end_epoch(self, row: dict) -> None:
        if not self.quiet:
            self.out.print(epoch_line(row, self.epochs))
