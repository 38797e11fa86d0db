"""Multi-process training with `jax.distributed`: one `cnn train` per host (or per process), CPU
collectives over gloo. docs/distributed.md has the commands.

Set in each process's environment:
    JAX_COORDINATOR_ADDRESS=host0:PORT   the coordinator (process 0 serves it)
    JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
optional:
    JAX_COORDINATOR_BIND_ADDRESS=ADDR:PORT   where process 0 listens (default: every address)
    CNN_COLLECTIVES_HOST=ADDR                the address this process's gloo collectives listen on
                                             (default: what the host name resolves to)
    CNN_PEER_TIMEOUT=S                        seconds after which a silent peer counts as dead (30)

Every process loads the same data and builds the same model from the same seed; each puts its own
slice of every global batch on its device, and the gradient is summed over all of them, so N
processes train as one process with the same global batch would. Process 0 alone writes the run
directory. A process that dies ends the others within about CNN_PEER_TIMEOUT seconds with one
line (a collective that loses its peer fails; a silent peer is caught by the heartbeats).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from .errors import CnnError

active = False  # True once this process joined a multi-process job


def wanted() -> bool:
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) and int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1


def initialize() -> None:
    """Join the job described by the environment (see the module docstring)."""
    global active
    import jax

    try:
        n, i = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ.get("JAX_PROCESS_ID", ""))
    except ValueError:
        raise CnnError("multi-process training needs JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=0..N-1") from None
    if not 0 <= i < n:
        raise CnnError(f"JAX_PROCESS_ID must be in 0..{n - 1}, not {i}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    host = os.environ.get("CNN_COLLECTIVES_HOST")
    if host:  # jax passes no address to gloo; without one gloo takes what the host name resolves to
        from jax._src import xla_bridge

        xla_bridge._jax.make_gloo_tcp_collectives = functools.partial(
            xla_bridge._jax.make_gloo_tcp_collectives, hostname=host)
    # A lost peer is reported in one line (`peer_lost`, else `supervise`): XLA's own logs of it are
    # pages of gRPC status, so they go to a log file.
    _logs_to_file(i)
    timeout = int(float(os.environ.get("CNN_PEER_TIMEOUT", "30")))
    try:
        jax.distributed.initialize(num_processes=n, process_id=i, heartbeat_timeout_seconds=timeout,
                                   initialization_timeout=max(timeout, 60), shutdown_timeout_seconds=timeout)
    except Exception as e:  # noqa: BLE001 - XLA's errors are long; the user gets their first line
        raise CnnError(f"could not join the {n}-process job at {os.environ['JAX_COORDINATOR_ADDRESS']} as process "
                       f"{i}: {str(e).strip().splitlines()[0][:300]}") from None
    active = True
    # gloo greets on stdout when it connects to its peers ("[Gloo] Rank 0 is connected to 1 peer
    # ranks"): stdout is for results (--json), so a first collective connects it with fd 1 pointed
    # at /dev/null.
    from jax.experimental import multihost_utils

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        multihost_utils.sync_global_devices("cnn: every process started")
    finally:
        os.dup2(saved, 1)
        os.close(saved)


SUPERVISED = "CNN_SUPERVISED"


def supervise() -> int:
    """Run this `cnn` command as a child process and return its exit code, adding the one line the
    child could not print: when the coordinator goes away, XLA ends the process itself (a fatal
    error from its heartbeat thread, before Python can say anything). The child dies with us
    (PR_SET_PDEATHSIG): a killed supervisor must not leave a process training alone."""
    import signal
    import subprocess

    def die_with_parent():
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        # The ignore below is ours, not the user's: the child gets Ctrl-C as we were started with it
        # (an ignored SIGINT survives exec, and the child would never save on Ctrl-C).
        signal.signal(signal.SIGINT, started_with)

    started_with = signal.getsignal(signal.SIGINT)
    started_with = signal.SIG_IGN if started_with is signal.SIG_IGN else signal.SIG_DFL
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the child too; it does the saving
    child = subprocess.Popen([sys.executable, "-m", "cnncli.cli", *sys.argv[1:]], env={**os.environ, SUPERVISED: "1"},
                             stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    said = False
    for line in child.stderr:  # the child's own lines (XLA's go to its log file)
        said = said or line.startswith((b"error:", b"interrupted"))
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
    rc = child.wait()
    if rc != 0 and not said:
        i, n = os.environ.get("JAX_PROCESS_ID", "?"), os.environ.get("JAX_NUM_PROCESSES", "?")
        print(f"error: process {i} of {n}: another process of the job stopped or cannot be reached (XLA ended "
              f"this one; its log: {_log_path(i)}); start every process again (add --resume RUN to continue)",
              file=sys.stderr)
    return rc if rc >= 0 else 1  # killed by a signal: a plain failure


def _log_path(process_id) -> Path:
    from .data.cache import cache_root

    return cache_root() / "logs" / f"jax-process-{process_id}.log"


def _logs_to_file(process_id: int) -> None:
    """Point fd 2 (where XLA's C++ logs go) at $CNN_CACHE_DIR/logs/jax-process-<i>.log; Python's
    sys.stderr keeps the terminal through a copy of the original descriptor."""
    import io

    path = _log_path(process_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = io.TextIOWrapper(io.FileIO(terminal, "w"), encoding=sys.stderr.encoding,
                                  errors="backslashreplace", line_buffering=True)


def is_follower() -> bool:
    """A process of a multi-process job other than the first: it prints only errors (from the
    environment, so that the command can say nothing before JAX has even joined the job)."""
    return wanted() and os.environ.get("JAX_PROCESS_ID", "0").strip() not in ("", "0")


def is_writer() -> bool:
    """Whether this process writes files and prints progress (process 0, or a single process)."""
    import jax

    return jax.process_index() == 0


def lost_peer(e: Exception) -> bool:
    """Whether `e` is a collective that failed in a multi-process job (jaxlib raises a gloo read
    error on a closed connection as a ValueError: "UNKNOWN: Gloo AllGather failed: ...")."""
    import jax

    return active and (isinstance(e, jax.errors.JaxRuntimeError) or "Gloo" in str(e))


def peer_lost(e: Exception) -> CnnError:
    """The one line for a collective that failed because another process went away."""
    import jax

    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return CnnError(f"process {jax.process_index()} of {jax.process_count()}: another process of the job stopped "
                    f"or cannot be reached ({first}); start every process again (add --resume RUN to continue)",
                    exit_code=1)
