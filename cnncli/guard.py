"""How every command ends when something goes wrong: one line, a known exit code, nothing lost.

- `CnnError` (what a user can fix): `error: <message>`, its exit code (2 unless it says otherwise).
- `OSError` from any read or write (disk full, read-only, permissions, a file where a folder
  should be): `error: <path>: <cause>`, exit 1. The writes are atomic (`fsutil`), so what was on
  disk before is still there.
- Ctrl-C: the training loop saves and says how to resume (`engine`); anywhere else `interrupted`,
  exit 130. A second Ctrl-C exits at once, even while XLA is inside a long computation (a
  Python signal handler would only run after it returns).
- Output closed early (`cnn ... | head`): no message, exit 141 as a process killed by SIGPIPE.

Typer handles KeyboardInterrupt (into `Exit(130)`, silently) and broken pipes (exit 1) itself,
before an exception could reach `main`; so the commands run under `Group`, which turns both into
exceptions of ours first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading

from typer.core import TyperGroup

from .errors import CnnError

SIGPIPE_EXIT = 128 + 13  # what a shell reports for a process that SIGPIPE ended


class Interrupted(CnnError):
    """Ctrl-C outside the training loop (which raises its own, naming the saved checkpoint)."""

    def __init__(self, message: str = "interrupted"):
        super().__init__(message, exit_code=130)


class _OutputClosed(Exception):
    """stdout's reader went away (a pipe into `head`)."""


def os_error_line(e: OSError) -> str:
    """`<path>: <cause>` for an OSError, e.g. `runs/x/config.json: No space left on device`."""
    cause = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno)
    names = [str(p) for p in (e.filename, e.filename2) if p]
    where = " -> ".join(names)
    return (f"{where}: {cause}" if where else cause) + (f" ({hint})" if hint else "")


_HINTS = {
    errno.ENOSPC: "free some space, or point --out / $CNN_CACHE_DIR elsewhere",
    errno.EDQUOT: "over the disk quota: free some space, or point --out / $CNN_CACHE_DIR elsewhere",
    errno.EROFS: "a read-only file system: choose a writable --out / $CNN_CACHE_DIR",
    errno.EACCES: "no permission: choose another folder or fix its permissions",
    errno.EPERM: "no permission: choose another folder or fix its permissions",
    errno.ENOTDIR: "a file stands where a folder is needed",
}


@contextlib.contextmanager
def translated():
    """Turn KeyboardInterrupt, a closed stdout and any other OSError into our own exceptions."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted() from None
    except BrokenPipeError as e:
        if e.filename is None:  # a write to a pipe: our output's reader left
            raise _OutputClosed() from None
        raise CnnError(os_error_line(e), exit_code=1) from None
    except OSError as e:
        raise CnnError(os_error_line(e), exit_code=1) from None


class Group(TyperGroup):
    """The app's command group: runs the chosen command under `translated()`."""

    def make_context(self, *args, **kwargs):  # Ctrl-C while the options are parsed, too
        with translated():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with translated():
            return super().invoke(ctx)


def run(call) -> None:
    """`cnn`'s entry point: `call()` runs the Typer app and returns its exit code; every failure ends
    as the module docstring says."""
    _exit_on_second_interrupt()
    # Matplotlib warns in two multi-line messages when $HOME is read-only (then uses a temporary
    # config dir, which is fine): the user's one line must stay one line.
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    try:
        with translated():
            code = call()
    except CnnError as e:
        _print_line(f"{e}" if isinstance(e, Interrupted) else f"error: {e}")
        _exit(e.exit_code, hard=e.exit_code == 130)
    except _OutputClosed:
        _silence_stdout()
        _exit(SIGPIPE_EXIT)
    _exit(code)


def _print_line(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:  # stderr itself is gone: the exit code still tells
        pass


def _exit(code: int, hard: bool = False) -> None:
    """Exit with `code`. `hard`: after Ctrl-C, skip the interpreter's teardown: XLA's threads may
    still be running a dispatched computation, and tearing the runtime down under them crashed
    (segmentation faults after Ctrl-C during test-time evaluation, #33). In a multi-process job,
    always: jax's own exit waits for every peer (`jax.distributed.shutdown`), gone ones too."""
    distributed = sys.modules.get("cnncli.distributed")
    if distributed is not None and distributed.active:  # jax's exit would wait for peers that may be gone
        hard = True
    if hard and "jax" in sys.modules:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit cannot raise BrokenPipeError again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


_watcher_started = False


def _exit_on_second_interrupt() -> None:
    """Count SIGINTs on a thread woken by the interpreter's C-level handler (`set_wakeup_fd`): the
    first one goes on to Python (the loop saves, or KeyboardInterrupt); the second exits at once."""
    global _watcher_started
    if _watcher_started or threading.current_thread() is not threading.main_thread():
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):
        return
    _watcher_started = True

    def watch():
        seen = 0
        while True:
            data = reader.recv(64)
            if not data:
                return
            seen += data.count(bytes([signal.SIGINT]))
            if seen >= 2:
                os.write(sys.stderr.fileno(), b"\ninterrupted again: stopping now (the last checkpoint is kept)\n")
                os._exit(130)

    threading.Thread(target=watch, name="cnn-second-ctrl-c", daemon=True).start()
    # Keep both ends alive for the life of the process.
    _exit_on_second_interrupt.sockets = (reader, writer)
