"""Where output goes: Rich on a terminal, plain lines otherwise, stdout kept clean for `--json`.

Every command builds one `Out`. With `json=True` all human output goes to stderr and the
command prints exactly one JSON document (or one per line, for `bench`) on stdout.
"""

from __future__ import annotations

import contextlib
import sys
import time

from rich.console import Console
from rich.table import Table


class Out:
    def __init__(self, json: bool = False):
        self.json = json
        # force_terminal=None lets Rich detect a TTY; off a TTY it prints plain text, no colour codes.
        # No file given: Rich writes to sys.stdout / sys.stderr as they are at each print (a
        # multi-process job moves sys.stderr off fd 2, see distributed.py).
        self.console = Console(stderr=json, highlight=False, soft_wrap=True)
        self.console.on_broken_pipe = _closed  # Rich would exit 1 itself; guard.py ends quietly
        self.is_tty = self.console.is_terminal

    def print(self, *args, **kwargs) -> None:
        self.console.print(*args, **kwargs)

    def table(self, title: str | None, columns: list[str], rows: list[list], justify_numbers=True) -> None:
        """A table: Rich box on a terminal, fixed-width plain columns elsewhere (CI logs, pipes)."""
        rows = [[fmt(c) for c in r] for r in rows]
        if self.is_tty:
            t = Table(title=title, show_lines=False)
            for i, c in enumerate(columns):
                t.add_column(c, justify="left" if i == 0 or not justify_numbers else "right")
            for r in rows:
                t.add_row(*r)
            self.console.print(t)
            return
        widths = [max(len(str(c)), *(len(r[i]) for r in rows)) if rows else len(str(c)) for i, c in enumerate(columns)]
        if title:
            self.console.print(title)
        right = lambda i: i > 0 and justify_numbers  # noqa: E731
        line = lambda cells: "  ".join(  # noqa: E731
            (str(c).rjust(w) if right(i) else str(c).ljust(w)) for i, (c, w) in enumerate(zip(cells, widths))
        )
        self.console.print(line(columns).rstrip())
        for r in rows:
            self.console.print(line(r).rstrip())

    def emit_json(self, obj) -> None:
        """The machine-readable result: stdout, one line, nothing else there; it names the version that made it."""
        from . import __version__
        from .fsutil import dumps

        if isinstance(obj, dict):
            obj = {**obj, "cnn_version": __version__}
        elif isinstance(obj, list):  # one object per input (predict)
            obj = [{**o, "cnn_version": __version__} if isinstance(o, dict) else o for o in obj]
        sys.stdout.write(dumps(obj) + "\n")
        sys.stdout.flush()


PLAIN_EVERY = 10.0  # seconds between plain progress lines off a terminal (a quicker task prints none)


@contextlib.contextmanager
def task_progress(label: str, total: int | None, unit: str = "images", show_below: int = 0):
    """Progress of one long piece of work, on stderr (stdout stays clean for tables and --json).

    Yields `advance(n=1)`. On a terminal: a transient Rich bar with count and time left, unless
    `total` is under `show_below` (too quick to be worth a bar). Elsewhere (CI logs, pipes): a plain
    line every PLAIN_EVERY seconds, "label: 1,024/10,000 images, 12 s", so a long job shows it lives
    and a short one prints nothing. unit="bytes" counts in MB and shows the transfer speed.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if console.is_terminal:
        if total is not None and total < show_below:
            yield lambda n=1: None
            return
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        counted = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn(), TextColumn(unit)]
        columns = ["{task.description}", BarColumn(), *counted, TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n=1: bar.advance(task, n)
        return
    start = last = time.monotonic()
    done = 0

    def advance(n=1):
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= PLAIN_EVERY:
            last = now
            console.print(f"{label}: {_count(done, total, unit)}, {now - start:.0f} s")

    yield advance


def _count(done: int, total: int | None, unit: str) -> str:
    """ "1,024/10,000 images", or "4.2/9.9 MB" for bytes."""
    if unit == "bytes":
        of = f"/{total / 1e6:,.1f}" if total is not None else ""
        return f"{done / 1e6:,.1f}{of} MB"
    of = f"/{total:,}" if total is not None else ""
    return f"{done:,}{of} {unit}"


def _closed() -> None:
    raise BrokenPipeError(32, "output closed")


def fmt(v) -> str:
    """A table cell or summary number: 4 decimals, thousands separators, "-" for a missing value."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
