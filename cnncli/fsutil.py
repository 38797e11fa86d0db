"""Atomic file writes: nothing that was on disk is lost if we are killed mid-write."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    The temporary file lives in the same directory so `os.replace` is atomic (same filesystem).
    On error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path, None) from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600; what we write is the user's to share, as `open()` would make it.
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as f:  # flush file contents to disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming(e, path, tmp) from None
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, racing other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc (macOS): set and restore at once
    os.umask(mask)
    return mask


# Errors of the disk rather than of the caller's work: they get the destination's name (a write's
# ENOSPC names no file, mkstemp's EROFS names a temporary one), so the user's one line says where.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG,
                errno.ENOTDIR}


def _naming(e: OSError, path: Path, tmp) -> OSError:
    """`e` naming `path` where it names one of our temporary files, or none (a full or read-only disk)."""
    if e.errno is None and "free space" in str(e):  # numpy's tofile on a full disk: no errno, no path (#43)
        e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    name = os.path.basename(str(e.filename or ""))
    ours = e.filename in (None, tmp, str(tmp)) or (name.startswith(f".{path.name}.") and name.endswith(".tmp"))
    if e.errno in _DISK_ERRNOS and ours:
        return type(e)(e.errno, e.strerror, str(path))
    return e


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    # numpy scalars and arrays end up in metrics; keep JSON plain.
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj) -> str:
    """One-line JSON with the same conversions as `write_json` (for `--json` output)."""
    return json.dumps(obj, default=_json_default)
