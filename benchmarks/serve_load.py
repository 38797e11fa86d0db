"""`cnn serve` under load: concurrent one-image requests against `cnn predict` on a folder of the same images.

    python benchmarks/serve_load.py RUN_DIR [--clients 8 --requests 2000 --bad 200]

RUN_DIR is an MNIST run (the images are MNIST's test digits, from $CNN_DATA_DIR). Steps:
1. `cnn predict`'s throughput: the same library call the command makes (`predict_files` on a
   folder of the images as PNG files), in this process, after a warm-up; start-up excluded.
2. `cnn serve RUN_DIR` in a subprocess on a free loopback port; 50 warm-up requests.
3. `--clients` threads, each with one keep-alive connection, send the requests (raw PNG bodies)
   in a shuffled order with `--bad` bad ones mixed in (an HTML page named .jpg, an empty body, a
   truncated JPEG): each good one must get 200 and the class `cnn predict` gave, each bad one a
   4xx. The server's resident memory is sampled every 0.25 s.
Prints a summary and one JSON line with every figure. Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000, help="good one-image requests")
    p.add_argument("--bad", type=int, default=200, help="bad requests mixed in")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    return p.parse_args()


def images(n: int) -> list[bytes]:
    """The first n MNIST test digits as PNG bytes."""
    from PIL import Image

    from cnncli.data import load_dataset

    ds = load_dataset("mnist", val_split=0.0)
    out = []
    for x in ds.test.x[:n]:
        buf = io.BytesIO()
        Image.fromarray(x[..., 0]).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def bad_bodies() -> list[tuple[str, bytes]]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    return [("page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>"), ("empty.png", b""),
            ("truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])]


def predict_rate(run_dir: str, folder: Path) -> tuple[float, list[str]]:
    """images/s of `predict_files` on the folder (what `cnn predict FOLDER` runs), and the classes."""
    from cnncli.predict import collect_inputs, predict_files
    from cnncli.train import load_run

    run = load_run(run_dir)
    files, _ = collect_inputs([folder])
    predict_files(run, files[:300])  # compile the chunk shapes' step
    t = time.perf_counter()
    results = predict_files(run, files)
    rate = len(files) / (time.perf_counter() - t)
    return rate, [r["class"] for r in results]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    args = parse_args()
    from cnncli.bench import cpu_info
    from cnncli.runtime import tune_xla

    tune_xla()  # as `cnn` itself runs
    bodies = images(args.requests)
    with tempfile.TemporaryDirectory() as d:
        for i, b in enumerate(bodies):
            Path(d, f"{i:05d}.png").write_bytes(b)
        predict_ips, classes = predict_rate(args.run_dir, Path(d))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "cnncli.cli", "serve", args.run_dir, "--port", str(port),
                               "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    sys.exit(f"cnn serve did not start: {log.read().decode()[-1000:]}")
                time.sleep(0.3)
        rng = random.Random(0)
        bad = bad_bodies()
        work = [("good", i) for i in range(args.requests)] + [("bad", i % len(bad)) for i in range(args.bad)]
        rng.shuffle(work)
        results = run_load(port, args.clients, bodies[:50], [], None)  # warm-up: connections, thread pool
        memory, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                memory.append(rss_mb(server.pid))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t = time.perf_counter()
        results = run_load(port, args.clients, bodies, bad, work)
        wall = time.perf_counter() - t
        stop.set()
        sampler.join()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
    finally:
        server.terminate()
        server.wait(timeout=60)

    good = [r for r in results if r["kind"] == "good"]
    errors = [r for r in good if r["status"] != 200 or r["class"] != classes[r["i"]]]
    bad_ok = sum(400 <= r["status"] < 500 for r in results if r["kind"] == "bad")
    lat = sorted(r["seconds"] for r in good)
    pct = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    serve_ips = len(good) / wall
    cpu = cpu_info()
    row = dict(clients=args.clients, requests=len(good), bad=args.bad, bad_answered_4xx=bad_ok, errors=len(errors),
               wall_s=round(wall, 2), serve_images_per_s=round(serve_ips, 1),
               predict_images_per_s=round(predict_ips, 1), ratio=round(serve_ips / predict_ips, 3),
               latency_ms=dict(p50=round(pct(0.5), 1), p90=round(pct(0.9), 1), p99=round(pct(0.99), 1),
                               max=round(1000 * lat[-1], 1)),
               rss_mb=dict(start=round(memory[0], 1), end=round(memory[-1], 1), max=round(max(memory), 1)),
               images_per_batch=round(health["images"] / max(1, health["batches"]), 2),
               max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, cpu=cpu)
    print(f"cnn serve, {args.clients} clients, {len(good)} one-image requests + {args.bad} bad, on {cpu['model']} "
          f"({cpu['cores']} cores)")
    print(f"  errors {len(errors)}; bad requests answered 4xx: {bad_ok}/{args.bad}")
    print(f"  throughput {serve_ips:.0f} images/s; cnn predict on a folder of the same images {predict_ips:.0f} "
          f"images/s: {100 * serve_ips / predict_ips:.0f}%")
    print(f"  latency p50 {pct(0.5):.1f} ms, p90 {pct(0.9):.1f} ms, p99 {pct(0.99):.1f} ms")
    print(f"  server memory (RSS) {memory[0]:.0f} MB at the start, {memory[-1]:.0f} MB at the end, max {max(memory):.0f}")
    print(f"  {row['images_per_batch']} images per batched call on average")
    print(json.dumps(row))


def run_load(port: int, clients: int, bodies: list[bytes], bad: list, work) -> list[dict]:
    """Send the work items from `clients` threads (one keep-alive connection each); one dict per request."""
    items = queue.Queue()
    for item in work if work is not None else [("good", i) for i in range(len(bodies))]:
        items.put(item)
    out, lock = [], threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            try:
                kind, i = items.get_nowait()
            except queue.Empty:
                break
            name, body = (f"{i:05d}.png", bodies[i]) if kind == "good" else bad[i]
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"X-Filename": name,
                                                                     "Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                data = json.loads(resp.read())
                status = resp.status
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, data = -1, {}
            seconds = time.perf_counter() - t
            cls = data["results"][0].get("class") if status == 200 else None
            with lock:
                out.append(dict(kind=kind, i=i, status=status, seconds=seconds, **{"class": cls}))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
