"""Shared test settings: where the real data sets are.

The real data lives beside the repository, in ../shared/data (see its README.md). When that
folder exists, CNN_DATA_DIR points at it for the whole session (subprocesses inherit it);
tests that need it take the `data_dir` fixture, which skips them when it is missing.
The array cache is CNN_CACHE_DIR, by default `.cache/cnn` inside the clone (as in CI); tests
that check caching take `fresh_cache` for an empty one of their own.
"""

import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

if SHARED_DATA.is_dir():
    os.environ["CNN_DATA_DIR"] = str(SHARED_DATA)
# Test data sets never land in the user's own cache: the clone's, as in CI (.gitignored).
os.environ.setdefault("CNN_CACHE_DIR", str(REPO / ".cache" / "cnn"))
# Layers run as XLA's plain ops unless a test turns the tuner on: measuring every tiny shape the
# suite meets would cost minutes and make what runs depend on the machine's load. Every candidate
# is tested against the plain op (test_layers.py) and the tuner itself in test_tuner.py.
os.environ.setdefault("CNN_TUNE", "0")
# The oneDNN kernel library is built once for the session (~10 s of g++), not into every test's fresh
# cache: the tuner's key asks for it whenever a test measures.
os.environ.setdefault("CNN_KERNELS_DIR", str(Path(os.environ["CNN_CACHE_DIR"]) / "kernels"))
# A process started with Ctrl-C ignored (a shell script's `pytest &`, nohup, some CI runners) passes
# that on to every child, and `cnn` honours an inherited ignore (train/epochs._Interrupt): the tests that
# send SIGINT to a `cnn` process then saw it exit 0 or wait out a 60 s stall (#43). Give the children
# the disposition a terminal gives them, whatever started pytest.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")  # a path only: module fixtures that train on real data take it too
def data_dir() -> Path:
    """The real data sets folder ($CNN_DATA_DIR); skips the test when it is not there."""
    path = Path(os.environ.get("CNN_DATA_DIR", SHARED_DATA))
    if not (path / "mnist").is_dir():
        pytest.skip(f"real data not found at {path} (set CNN_DATA_DIR)")
    return path


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty array cache for this test only."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CNN_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def run_cnn(monkeypatch, capsys):
    """The real `cnn` entry point in-process (JAX stays warm): run_cnn(*args) -> (exit code, stdout, stderr)."""
    from cnncli.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["cnn", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        out = capsys.readouterr()
        return e.value.code, out.out, out.err

    return run
