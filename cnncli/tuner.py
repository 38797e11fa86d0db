"""Which formulation of an op runs: decided by timing the candidates on this machine, once.

The model code asks `choose(op, key, candidates, make_inputs)` while it is traced. The first time a
(host, op, key) is seen, each candidate is compiled and timed on inputs of that shape and dtype, the
fastest is kept, and the choice is written to one versioned JSON file under the cache dir. Every
later trace, in this process or another (train, evaluate, predict, bench), reads it back. cuDNN's
benchmark mode and XLA's GPU autotuner work the same way.

Why measure instead of a rule: the same formulation won by 1.2-2x on an AVX2 EPYC and lost by as
much on an AVX-512/AMX Xeon (issue #29); what XLA:CPU hands to which library, and how fast that
library is, changes with the CPU and the jaxlib version, both part of the key.

The first candidate of every op is XLA's plain op: it is what runs when measuring is off
(`CNN_TUNE=0`), in a multi-process job (every process must compile the same program, and their
measurements could disagree), when every other candidate fails, or under `plain()` (export, FLOP
counting).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

VERSION = 1
# Per candidate: timed calls after the compiling one, stopping early once this many seconds went.
REPEATS, BUDGET_S = 7, 0.15

_table: dict | None = None  # key -> {"choice": name, "ms": {name: ms}} for this host
_plain = 0
_retune = False
_noted = False
_measured: list[tuple[str, str, float]] = []  # (op key, choice, seconds spent), this process
_fresh: set[str] = set()  # keys measured by this process (a retune measures each once)
_used: dict[str, str] = {}  # op key -> the candidate this process traced with (measured or read)


def host(cpuinfo: str | None = None) -> dict:
    """What decides which formulation is fastest: CPU model and ISA, cores, jax, XLA's flags."""
    import platform

    import jax
    import jaxlib

    from . import host as machine

    model, _ = machine.cpu_fields(cpuinfo)
    return dict(cpu=model or platform.processor() or platform.machine(),
                isa=sorted(machine.flags(cpuinfo) & set(machine.ISA_FLAGS)), cores=machine.cores(),
                backend=jax.default_backend(), jax=jax.__version__, jaxlib=jaxlib.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""), tuner=VERSION, kernels=_kernels_version())


def _kernels_version() -> str | None:
    """The oneDNN kernel library's build key (its source, jaxlib, oneDNN), None without it: a choice
    made with or without them, or with another build, is not this host's."""
    from . import kernels

    return kernels.version()


def host_id(h: dict) -> str:
    return hashlib.sha1(json.dumps(h, sort_keys=True).encode()).hexdigest()[:16]


def path() -> Path:
    from .host import cache_root

    return cache_root() / "tuning.json"


def _note(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _read_file() -> dict:
    """The whole file, {"version": 1, "hosts": {id: {"host": {...}, "ops": {...}}}}; empty if absent.
    A file that cannot be read or parsed is measured again, with a note, never fatal."""
    p = path()
    try:
        doc = json.loads(p.read_text())
        if not (isinstance(doc, dict) and doc.get("version") == VERSION and isinstance(doc.get("hosts"), dict)):
            raise ValueError("not a version-%d tuning table" % VERSION)
        return doc
    except FileNotFoundError:
        return {"version": VERSION, "hosts": {}}
    except (OSError, ValueError) as e:
        _note(f"note: tuning cache {p} unreadable ({e}); measuring again")
        return {"version": VERSION, "hosts": {}}


def _load() -> dict:
    global _table
    if _table is None:
        entry = _read_file()["hosts"].get(host_id(host()), {})
        ops = entry.get("ops") if isinstance(entry, dict) else None
        _table = {k: v for k, v in (ops or {}).items() if isinstance(v, dict) and isinstance(v.get("choice"), str)}
    return _table


def _save(key: str, record: dict) -> None:
    """Merge one choice into the file (re-read first: another process may have added its own)."""
    from .fsutil import write_json

    h = host()
    doc = _read_file()
    entry = doc["hosts"].setdefault(host_id(h), {"host": h, "ops": {}})
    entry.setdefault("ops", {})[key] = record
    try:
        write_json(path(), doc)
    except OSError as e:  # a read-only cache: the choice holds for this process only
        _note(f"note: could not write the tuning cache {path()} ({e.strerror or e})")


@contextlib.contextmanager
def plain():
    """Every op as XLA's plain op (the first candidate), e.g. for export or for counting FLOPs."""
    global _plain
    _plain += 1
    try:
        yield
    finally:
        _plain -= 1


def is_plain() -> bool:
    return _plain > 0


def active() -> bool:
    """Whether `choose` measures or reads a choice (else it takes the plain op without asking):
    candidates that cost something to offer (building the oneDNN kernels) are offered only then."""
    return not is_plain() and _enabled()


def retune(on: bool = True) -> None:
    """Measure every op met from now on again, replacing this host's cached choices (`--tune`)."""
    global _retune
    _retune = on


def used() -> dict[str, str]:
    """op key -> the candidate this process chose for it (e.g. "onednn"), for what `cnn bench` ran."""
    return dict(_used)


def measured() -> list[tuple[str, str, float]]:
    """(op key, chosen candidate, seconds spent measuring) for what this process measured."""
    return list(_measured)


def _enabled() -> bool:
    if os.environ.get("CNN_TUNE", "1") == "0":
        return False
    import jax

    return jax.process_count() == 1


def _compile_all(candidates: dict, args) -> dict:
    """name -> compiled executable (or the exception it raised); XLA's compiles run side by side.

    Compiling is most of what measuring costs (9 of net1's 15 s, one XLA compile per candidate),
    and XLA compiles without the GIL, so a thread per core overlaps them. Lowering (tracing) stays
    in this thread, one candidate after the other: a candidate that contains tuned layers (a whole
    step, an inference slice size) measures those while it is traced, and measurements must never
    run side by side. Timing stays sequential too."""
    import concurrent.futures

    import jax

    lowered: dict = {}
    for name, fn in candidates.items():
        try:
            lowered[name] = jax.jit(fn).lower(*args)
        except Exception as e:  # noqa: BLE001 - reported per candidate, see `choose`
            lowered[name] = e

    def compile_one(low):
        if isinstance(low, Exception):
            return low
        try:
            return low.compile()
        except Exception as e:  # noqa: BLE001
            return e

    from .host import cores

    workers = min(len(lowered), cores())
    # Every candidate's executable goes into JAX's persistent compilation cache (setup_jax: only
    # compiles over 0.5 s otherwise): a re-measure (`--tune`, another process, a new shape of the same
    # layer) then loads them instead of compiling; compiling was 12 of net1's 18.7 s of tuning.
    with _cache_every_compile():
        if workers <= 1:
            return {name: compile_one(low) for name, low in lowered.items()}
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return dict(zip(lowered, pool.map(compile_one, lowered.values())))


@contextlib.contextmanager
def _cache_every_compile():
    import jax

    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


def _time(fn, args, best: float) -> float:
    """Median seconds of `fn(*args)` after one warm-up call: up to REPEATS calls within BUDGET_S (at
    least 2), none when the warm-up alone took 3x the `best` candidate so far (a first call is slower,
    never faster, than the later ones), one when the first timed call took twice the best."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    warm = time.perf_counter() - t
    # Cannot win: do not spend seconds confirming it. A first call also pays one-off costs (a oneDNN
    # kernel starts its OpenMP team: 6 ms against 1 ms after), so a small op is never judged by it.
    if warm > max(3 * best, best + 0.02, 0.005):
        return warm
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < REPEATS and (len(times) < 2 or time.perf_counter() - start < BUDGET_S):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
        if times[0] > 2 * best:
            break
    return statistics.median(times)


def choose(op: str, key: tuple, candidates: dict, make_inputs) -> str:
    """The name of the fastest of `candidates` (name -> function of the inputs) for `key`.

    `make_inputs()` returns the arrays to time them on (shapes and dtypes as in the real call).
    The first name is XLA's plain op, the fallback. Called at trace time: the timing runs eagerly
    (`ensure_compile_time_eval`), outside the program being traced.
    """
    names = list(candidates)
    if is_plain() or len(names) == 1 or not _enabled():
        return names[0]
    k = _key(op, key)
    table = _load()
    known = table.get(k)
    if known and (not _retune or k in _fresh):
        # Fewer candidates than were measured (the oneDNN kernels turned off for a whole-step
        # comparison, see tuner.kernels_in_step): the fastest of them by the record, nothing measured.
        ms = known.get("ms") if isinstance(known.get("ms"), dict) else {}
        choice = known["choice"] if known["choice"] in candidates else (
            min((n for n in candidates if n in ms), key=ms.get) if all(n in ms for n in candidates) else None)
        if choice is not None:
            _used[k] = choice
            return choice
    import jax

    global _noted
    if not _noted:
        _noted = True
        # Not "once": each new shape (an evaluation batch, another model) is measured the first time.
        _note(f"measuring the fastest form of each layer for these shapes on this CPU (kept in {path()})")
    t0 = time.perf_counter()
    ms: dict[str, float] = {}
    with jax.ensure_compile_time_eval():
        args = make_inputs()
        for name, compiled in _compile_all(candidates, args).items():
            if isinstance(compiled, Exception):  # a form this backend cannot compile is not a candidate
                continue
            try:
                best = min(ms.values(), default=float("inf")) / 1e3
                ms[name] = round(_time(compiled, args, best) * 1e3, 4)
            except Exception:  # nor one it cannot run  # noqa: BLE001
                continue
    choice = min(ms, key=ms.get) if ms else names[0]
    record = {"choice": choice, "ms": ms, "load": _load_average()}
    _warn_if_busy(record["load"])
    table[k] = record
    _used[k] = choice
    _fresh.add(k)
    _measured.append((k, choice, time.perf_counter() - t0))
    _save(k, record)
    return choice


_warned_busy = False


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not Unix
        return None


def _warn_if_busy(load: float | None) -> None:
    """Timings taken while other jobs hold the cores pick badly, and the choice is kept: say so once.
    On the AMX Xeon, net1's choices measured at load ~9 trained at 523 images/s, measured again on
    the quiet machine at 916."""
    global _warned_busy
    from .host import cores as count

    cores = count()
    if load is not None and load > cores and not _warned_busy:
        _warned_busy = True
        _note(f"note: the machine is busy (load {load:.1f} on {cores} cores) while measuring; for choices that hold, "
              "run `cnn bench --tune` again when it is quiet")


def choices() -> dict:
    """This host's cached table (op key -> record)."""
    return dict(_load())


def _key(op: str, key: tuple) -> str:
    """The table's key of an op's shapes and settings."""
    return op + repr(key)


def record(op: str, key: tuple) -> dict:
    """The cached record of `choose(op, key, ...)` on this host ({} before it was measured): its
    choice and the milliseconds each candidate took."""
    return dict(_load().get(_key(op, key), {}))


def reset() -> None:
    """Forget what was loaded (tests; after the cache dir changes)."""
    global _table, _noted, _retune
    _table, _noted, _retune = None, False, False
    _measured.clear()
    _fresh.clear()
    _used.clear()


def kernels_in_step(key: tuple, make_step, make_inputs) -> bool:
    """Whether the whole step, `make_step(use_kernels)`, runs faster with its ops' oneDNN choices
    than with XLA's forms only; timed by the tuner (once per host and key, kept) on `make_inputs()`.

    Each op's kernel won alone, yet net2's MNIST train step ran 9% slower with them (2,780 against
    3,044 images/s on the AVX2 EPYC): while XLA runs a oneDNN call its own workers spin, and the OpenMP
    team spins after it, on 2 cores. Only the whole step shows that. False where nothing is measured."""
    from . import kernels

    if not active() or not kernels.available():
        return False
    # "with" first: it measures the ops (oneDNN among them) on a new machine; "without" then reads them.
    return choose("kernels_step", key, {"with": make_step(True), "without": make_step(False)},
                  make_inputs) == "with"
