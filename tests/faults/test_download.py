"""`cnn download`: deadlines against servers on 127.0.0.1 that hang or trickle, Ctrl-C while it waits,
a kill during an import, and two imports into one data dir at once."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import numpy as np
from PIL import Image

from faultkit import cli, http_server, one_line, silent_server


def leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".importing-" in p.name]


def test_a_proxy_that_accepts_and_never_answers_is_a_stall(tmp_path):
    with silent_server() as proxy:
        env = {"HTTPS_PROXY": f"http://{proxy}", "CNN_DOWNLOAD_STALL": "1", "CNN_CACHE_DIR": str(tmp_path / "c")}
        t = time.monotonic()
        r = cli("download", "mnist", "--data-dir", tmp_path / "data", env=env, timeout=60)
        assert time.monotonic() - t < 30
        one_line(r.stderr, 2, r.returncode, "no answer for 1 s", "--from PATH")
        assert not leftovers(tmp_path / "data")
        # Ctrl-C while it waits (a minute of stall allowed): a message, 130, nothing left behind.
        p = subprocess.Popen([sys.executable, "-m", "cnncli.cli", "download", "mnist", "--data-dir", tmp_path / "data"],
                             env={**os.environ, **env, "CNN_DOWNLOAD_STALL": "60"}, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        one_line(err, 130, p.returncode, "interrupted")
        assert not leftovers(tmp_path / "data")


class Trickle(BaseHTTPRequestHandler):
    """Promises a megabyte and sends 100 bytes every 0.1 s: never a stall, never done."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b"\0" * 100)
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_the_whole_transfer_has_a_deadline(tmp_path):
    with http_server(Trickle) as url:
        env = {"CNN_DOWNLOAD_MIRROR": url, "CNN_DOWNLOAD_DEADLINE": "1.5", "CNN_CACHE_DIR": str(tmp_path / "c")}
        r = cli("download", "cifar10", "--data-dir", tmp_path / "data", env=env, timeout=60)
    one_line(r.stderr, 2, r.returncode, "cifar-10-binary.tar.gz: not complete within the deadline",
             "CNN_DOWNLOAD_DEADLINE", "--from PATH")
    assert not leftovers(tmp_path / "data")


def _tiny_cifar_folders(root):
    rng = np.random.default_rng(0)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    for split, n in (("train", 3), ("test", 1)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(root / split / c / f"{i}.png")


def test_imports_into_one_data_dir_killed_and_concurrent(tmp_path):
    src, data = tmp_path / "src", tmp_path / "data"
    _tiny_cifar_folders(src)
    env = {"CNN_CACHE_DIR": str(tmp_path / "c")}
    r = cli("download", "cifar10", "--from", src, "--data-dir", data, env=env | {"CNN_FAULT_AT": "import-staged"})
    assert r.returncode == -signal.SIGKILL and leftovers(data)  # a half-made import: removed next time
    with ThreadPoolExecutor(2) as pool:  # the case: two at once, one traceback
        runs = list(pool.map(lambda _: cli("download", "cifar10", "--from", src, "--data-dir", data, "--json",
                                           env=env), range(2)))
    for r in runs:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert not leftovers(data) and sorted(p.name for p in (data / "cifar10").iterdir()) == ["test", "train"]
    assert len(list((data / "cifar10" / "train").rglob("*.png"))) == 30
