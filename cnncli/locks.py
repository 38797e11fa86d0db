"""Exclusive locks on folders that one process at a time may write (run directories, data imports).

A lock is `fcntl.flock` on `<folder>/.lock`, which holds the holder's pid. The kernel drops a
flock when its process dies however it dies (kill -9 included), so a lock file left by a dead
process is simply taken over; the pid in it is only there to name the holder in the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .errors import CnnError

LOCK_NAME = ".lock"


class Lock:
    """Held until `release()` (or the process ends)."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = -1


def acquire(folder: Path, what: str, wait: bool = False, name: str = LOCK_NAME) -> Lock:
    """Lock `folder` (the file `folder/name`) or raise a CnnError naming the holder's pid (`wait`:
    block until it is free)."""
    path = Path(folder) / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise CnnError(f"{folder} is in use: {what} by process {holder or '?'}; wait for it to end "
                       f"(or stop it) and try again") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:  # a full disk: the user's one line names the file
        os.close(fd)
        raise type(e)(e.errno, e.strerror, str(path)) from None
    return Lock(fd, path)


@contextlib.contextmanager
def held(folder: Path, what: str, wait: bool = False, name: str = LOCK_NAME):
    lock = acquire(folder, what, wait, name)
    try:
        yield lock
    finally:
        lock.release()


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
