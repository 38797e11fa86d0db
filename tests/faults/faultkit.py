"""Helpers of the fault-injection tests (#33): subprocesses, one-line checks, disks, local servers.

Disks: a small tmpfs when this process may mount one (root, as in CI here); elsewhere (or with
CNN_TEST_MOCK_DISK=1) the same tests run against a mocked ENOSPC / EROFS raised by every atomic
write under the folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path


def cli(*args, env=None, cwd=None, timeout=240, **kw):
    """`cnn ARGS` in a subprocess (signals and kills need a process of its own)."""
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "cnncli.cli", *map(str, args)], capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=timeout, **kw)


def one_line(stderr: str, code: int, rc: int, *needles: str) -> None:
    """No traceback, exactly one line on stderr, the exit code, and the words that must be there."""
    assert "Traceback" not in stderr, stderr
    assert rc == code, (rc, stderr)
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _mount(path: Path, *opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


class Disk:
    """A folder on a small file system that can be filled up or made read-only."""

    def __init__(self, path: Path, real: bool, monkeypatch):
        self.path, self.real, self._mp = path, real, monkeypatch

    def fill(self) -> None:
        if self.real:
            with open(self.path / f"filler-{uuid.uuid4().hex}", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (64 << 10))
                        f.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC
        else:
            self._fail(errno.ENOSPC)

    def read_only(self) -> None:
        if self.real:
            subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)
        else:
            self._fail(errno.EROFS)

    def _fail(self, code: int) -> None:
        """Mocked: every atomic write under the folder fails as the kernel would."""
        import contextlib

        from cnncli import fsutil

        real = fsutil.atomic_path

        @contextlib.contextmanager
        def failing(path):
            if Path(path).resolve().is_relative_to(self.path.resolve()):
                raise OSError(code, os.strerror(code), str(path))
            with real(path) as tmp:
                yield tmp

        self._mp.setattr(fsutil, "atomic_path", failing)
        for mod in ("cnncli.runs.checkpoint", "cnncli.data.cache"):
            self._mp.setattr(f"{mod}.atomic_path", failing)




@contextlib.contextmanager
def http_server(handler_cls):
    """A threaded HTTP server on 127.0.0.1 (a free port), yielding its base URL."""
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_server():
    """Accepts connections on 127.0.0.1 and never answers (a proxy that hangs), yielding host:port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield "127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        sock.close()
