"""HTTP(S) downloads with deadlines: the whole transfer, and a stall (no byte for a while).

urllib (it honours $HTTPS_PROXY / $HTTP_PROXY as curl does) instead of a library that retries
for minutes: behind a proxy that accepts connections and never answers, `cnn download` used to
hang until killed. Each file streams into a temporary file beside its destination, renamed into
place when complete; any failure removes it. Progress is the project's own (console.task_progress).

Deadlines, in seconds: $CNN_DOWNLOAD_DEADLINE (default 1800 for everything `cnn download`
fetches) and $CNN_DOWNLOAD_STALL (default 30). $CNN_DOWNLOAD_MIRROR replaces the official host
(`http://mirror.local/mnist/` + the official file name), for sites that mirror the files.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from ..errors import CnnError
from ..fsutil import atomic_path

DEADLINE_ENV, STALL_ENV, MIRROR_ENV = "CNN_DOWNLOAD_DEADLINE", "CNN_DOWNLOAD_STALL", "CNN_DOWNLOAD_MIRROR"
DEADLINE, STALL = 1800.0, 30.0
CHUNK = 1 << 20


class DownloadError(CnnError):
    pass


def seconds(env: str, default: float) -> float:
    value = os.environ.get(env)
    if not value:
        return default
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise CnnError(f"${env} must be a number of seconds above 0, not {value!r}")
    return v


def mirrored(url: str) -> str:
    """`url`, or the same file name under $CNN_DOWNLOAD_MIRROR."""
    mirror = os.environ.get(MIRROR_ENV)
    return mirror.rstrip("/") + "/" + Path(urlparse(url).path).name if mirror else url


def fetch_all(urls: list[str], dest: Path, what: str, advice: str) -> list[Path]:
    """Download every URL into `dest/<file name>` within one overall deadline; a failure is one line
    naming the file, why, and `advice` (what the user can do instead)."""
    deadline = time.monotonic() + seconds(DEADLINE_ENV, DEADLINE)
    stall = seconds(STALL_ENV, STALL)
    placed = []
    for url in urls:
        url = mirrored(url)
        target = dest / Path(urlparse(url).path).name
        try:
            fetch(url, target, deadline, stall)
        except DownloadError as e:
            raise DownloadError(f"download of {what} failed: {e}. {advice}") from None
        placed.append(target)
    return placed


def fetch(url: str, target: Path, deadline: float, stall: float) -> None:
    """Stream `url` into `target` atomically; DownloadError past `deadline` (monotonic) or a stall."""
    from ..console import task_progress

    name = Path(target).name
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError(f"{name}: out of time before it started")
    try:
        with urllib.request.urlopen(url, timeout=stall) as r, atomic_path(target) as tmp, \
                open(tmp, "wb") as f, \
                task_progress(f"downloading {name}", _int(r.headers.get("Content-Length")), "bytes") as advance:
            total = r.headers.get("Content-Length")
            got = 0
            while True:
                if time.monotonic() > deadline:
                    raise DownloadError(f"{name}: not complete within the deadline "
                                        f"({got:,} of {total or '?'} bytes; ${DEADLINE_ENV} raises it)")
                block = r.read1(CHUNK)  # what has arrived; a read waiting `stall` s raises a timeout
                if not block:
                    break
                f.write(block)
                got += len(block)
                advance(len(block))
            if total is not None and got != int(total):
                raise DownloadError(f"{name}: connection closed after {got:,} of {int(total):,} bytes")
    except DownloadError:
        raise
    except (socket.timeout, TimeoutError):
        raise DownloadError(f"{name}: no data for {stall:g} s (stalled; ${STALL_ENV} sets how long to wait)") from None
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{name}: the server answered {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise DownloadError(f"{name}: no answer for {stall:g} s (stalled; ${STALL_ENV} sets how long to "
                                f"wait)") from None
        raise DownloadError(f"{name}: {getattr(reason, 'strerror', None) or reason}") from None
    except (OSError, ValueError) as e:  # connection reset, a bad URL
        if isinstance(e, OSError) and e.filename:  # the disk, not the network: guard.py's one line
            raise
        raise DownloadError(f"{name}: {getattr(e, 'strerror', None) or e}") from None


def _int(header: str | None) -> int | None:
    return int(header) if header and header.isdigit() else None
