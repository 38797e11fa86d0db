"""Fault injection (#33): real signals at named points, full and read-only disks, crafted files.

Each test injects one fault and then checks what is on disk, not only the exit code: the earlier
checkpoint or cache still loads, and the interrupted work can be completed.
"""

import os
import subprocess

import pytest

from faultkit import Disk, _mount


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """A 16 MB tmpfs (or, where mounting is refused, a folder with mocked write errors)."""
    path = tmp_path / "disk"
    real = os.geteuid() == 0 and not os.environ.get("CNN_TEST_MOCK_DISK") and _mount(path, "size=16m")
    try:
        yield Disk(path, real, monkeypatch)
    finally:
        if real:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
