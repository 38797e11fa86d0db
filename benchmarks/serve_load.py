"""`cnn serve` under load: concurrent one-image requests against `cnn predict` on a folder of the same images.

    python benchmarks/serve_load.py RUN_DIR [--clients 8 --requests 2000 --bad 200] [--client wrk|python] [--vs onnxruntime]

RUN_DIR is an MNIST run (the images are MNIST's test digits, from $CNN_DATA_DIR). Steps, in one run
so that the ratio compares the two on the same machine at the same hour:
1. `cnn predict`'s throughput: the same library call the command makes (`predict_files` on a
   folder of the images as PNG files), in this process, after a warm-up; start-up excluded.
2. `cnn serve RUN_DIR` in a subprocess on a free loopback port; 50 warm-up requests.
3. A load generator in its own process, cheap so that it leaves the cores to the server: Debian's
   `wrk` (apt-get install wrk) with a Lua script, else (or with --client python) an asyncio client
   of this file. `--clients` keep-alive connections send the requests (raw PNG bodies) in a
   shuffled order with `--bad` bad ones mixed in (an HTML page named .jpg, an empty body, a
   truncated JPEG): each good one must get 200 and the class `cnn predict` gave, each bad one a
   4xx. The server's resident memory is sampled every 0.25 s.
4. With `--vs onnxruntime`: the run's ONNX export behind the smallest FastAPI app that runs it
   (benchmarks/onnx_serve.py), started, warmed and loaded the same way by the same client, in the
   same run: what a user would deploy instead of `cnn serve`.
Prints a summary naming the client that produced it and one JSON line with every figure. Not a
test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
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
    p.add_argument("--client", choices=["auto", "wrk", "python"], default="auto",
                   help="load generator: wrk where installed (auto), else this file's asyncio client")
    p.add_argument("--vs", choices=["onnxruntime"], default=None,
                   help="also load the run's ONNX export behind the smallest FastAPI app (onnx_serve.py), "
                        "same client, same run")
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
    from cnncli.runs import load_run

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
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    bodies = images(args.requests)
    rng = random.Random(0)
    work = [["good", i] for i in range(args.requests)] + [["bad", i % len(bad_bodies())] for i in range(args.bad)]
    rng.shuffle(work)
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d, "images")
        folder.mkdir()
        for i, b in enumerate(bodies):
            (folder / f"{i:05d}.png").write_bytes(b)
        predict_ips, classes = predict_rate(args.run_dir, folder)
        Path(d, "work.json").write_text(json.dumps(dict(work=work, classes=classes)))
        cnn_serve = [sys.executable, "-m", "cnncli.cli", "serve", args.run_dir, "--max-batch", str(args.max_batch),
                     "--max-wait-ms", str(args.max_wait_ms), "--port"]
        out, memory, health = measure_server(cnn_serve, client, args.clients, d)
        peer = None
        if args.vs == "onnxruntime":
            model = Path(d, "model.onnx")
            subprocess.run([sys.executable, "-m", "cnncli.cli", "export", args.run_dir, "--format", "onnx",
                            "--out", str(model)], check=True, capture_output=True)
            peer_cmd = [sys.executable, str(Path(__file__).with_name("onnx_serve.py")), str(model)]
            peer_out, peer_memory, _ = measure_server(peer_cmd, client, args.clients, d)
            peer = dict(images_per_s=round(peer_out["good"] / peer_out["seconds"], 1), errors=peer_out["errors"],
                        bad_answered_4xx=peer_out["bad_4xx"],
                        latency_ms={k: round(v, 1) for k, v in peer_out["latency_ms"].items()},
                        rss_mb=dict(start=round(peer_memory[0], 1), end=round(peer_memory[-1], 1)))

    serve_ips = out["good"] / out["seconds"]
    cpu = cpu_info()
    row = dict(client=client, clients=args.clients, requests=out["good"], bad=args.bad,
               bad_answered_4xx=out["bad_4xx"], errors=out["errors"], wall_s=round(out["seconds"], 2),
               serve_images_per_s=round(serve_ips, 1), predict_images_per_s=round(predict_ips, 1),
               ratio=round(serve_ips / predict_ips, 3), latency_ms={k: round(v, 1) for k, v in out["latency_ms"].items()},
               rss_mb=dict(start=round(memory[0], 1), end=round(memory[-1], 1), max=round(max(memory), 1)),
               images_per_batch=round(health["images"] / max(1, health["batches"]), 2),
               max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, cpu=cpu)
    lat = out["latency_ms"]
    print(f"cnn serve, {args.clients} connections from {client}, {out['good']} one-image requests + {args.bad} bad, "
          f"on {cpu['model']} ({cpu['cores']} cores)")
    print(f"  errors {out['errors']}; bad requests answered 4xx: {out['bad_4xx']}/{args.bad}")
    print(f"  throughput {serve_ips:.0f} images/s; cnn predict on a folder of the same images {predict_ips:.0f} "
          f"images/s: {100 * serve_ips / predict_ips:.0f}%")
    print(f"  latency p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms ({out['latency_of']})")
    print(f"  server memory (RSS) {memory[0]:.0f} MB at the start, {memory[-1]:.0f} MB at the end, max {max(memory):.0f}")
    print(f"  {row['images_per_batch']} images per batched call on average")
    if peer is not None:
        row["onnxruntime_fastapi"] = peer
        row["vs_onnxruntime"] = round(serve_ips / peer["images_per_s"], 3)
        pl = peer["latency_ms"]
        print(f"onnxruntime peer (the ONNX export in the smallest FastAPI app, benchmarks/onnx_serve.py), same client:")
        print(f"  errors {peer['errors']}; bad requests answered 4xx: {peer['bad_answered_4xx']}/{args.bad}")
        print(f"  throughput {peer['images_per_s']:.0f} images/s; cnn serve {serve_ips / peer['images_per_s']:.2f}x "
              f"that; latency p50 {pl['p50']:.1f} ms, p90 {pl['p90']:.1f} ms, p99 {pl['p99']:.1f} ms "
              f"(cnn serve's p99 {lat['p99']:.1f})")
    print(json.dumps(row))


def measure_server(cmd: list[str], client: str, clients: int, d: str):
    """Start the server `cmd + [port]`, warm it, load it with the work in `d`: (summary, RSS samples, /health)."""
    with served(cmd) as (port, pid):
        load(client, port, clients, d, warm=True)  # connections, caches, the loop's first requests
        memory, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                memory.append(rss_mb(pid))
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out = load(client, port, clients, d)
        stop.set()
        sampler.join()
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read())
    return out, memory, health


@contextlib.contextmanager
def served(cmd: list[str]):
    """The server `cmd + [port]` on a free loopback port, up, answering and warmed up: (port, pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([*cmd, str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read())
                if health.get("ready", True):  # cnn serve answers while it warms up: wait for that too
                    break
                time.sleep(0.3)
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    sys.exit(f"cnn serve did not start: {log.read().decode()[-1000:]}")
                time.sleep(0.3)
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(timeout=60)


def load(client: str, port: int, clients: int, d: str, warm: bool = False) -> dict:
    """Run the load generator in its own process on the work in folder `d`; its summary."""
    if client == "wrk":
        # wrk runs for its -d whatever its script does: the script marks its first request and last
        # answer in files (their times give the wall time), then SIGINT makes wrk print its summary.
        script, started, finished = Path(d, "load.lua"), Path(d, "started"), Path(d, "finished")
        for f in (started, finished):
            f.unlink(missing_ok=True)
        script.write_text(wrk_script(d, warm))
        wrk = subprocess.Popen(["wrk", "-t1", f"-c{clients}", "-d600s", "--timeout", "60s", "-s", str(script),
                                f"http://127.0.0.1:{port}/predict"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not finished.exists() and wrk.poll() is None:
            time.sleep(0.005)
        wrk.send_signal(signal.SIGINT)
        stdout, stderr = wrk.communicate(timeout=120)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if not lines or not finished.exists():
            sys.exit(f"wrk printed no summary: {stdout[-1000:]} {stderr[-1000:]}")
        out = json.loads(lines[-1])
        out.update(json.loads(finished.read_text()))
        out["seconds"] = (finished.stat().st_mtime_ns - started.stat().st_mtime_ns) / 1e9
        return out
    done = subprocess.run([sys.executable, __file__, "--load", str(port), str(clients), d, "warm" if warm else "run"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def wrk_script(d: str, warm: bool) -> str:
    """wrk's Lua: the work list in order over its connections, every answer checked, a JSON summary."""
    spec = json.loads(Path(d, "work.json").read_text())
    work = [["good", i] for i in range(50)] if warm else spec["work"]
    names = [f"{i:05d}.png" for i in range(len(spec["classes"]))]
    bad = bad_bodies()
    lua = lambda b: '"' + "".join(f"\\{c}" for c in b) + '"'  # noqa: E731  (a Lua string of any bytes)
    goods = ",\n".join(lua(Path(d, "images", n).read_bytes()) for n in names[: max(i for k, i in work if k == "good") + 1])
    started, finished = Path(d, "started"), Path(d, "finished")
    return f"""
local goods = {{{goods}}}
local bads = {{{",".join(lua(b) for _, b in bad)}}}
local badnames = {{{",".join(lua(n.encode()) for n, _ in bad)}}}
local classes = {{{",".join(lua(c.encode()) for c in spec["classes"])}}}
local work = {{{",".join(f"{{{int(k == 'good')},{i + 1}}}" for k, i in work)}}}
local total = #work
local sent, answered, good, bad, bad4xx, errors = 0, 0, 0, 0, 0, 0

request = function()
  sent = sent + 1
  if sent == 1 then
    local f = io.open("{started}", "w")
    f:close()
  end
  local w = work[((sent - 1) % total) + 1]
  if w[1] == 1 then
    return wrk.format("POST", nil, {{["Content-Type"] = "application/octet-stream",
                                     ["X-Filename"] = string.format("%05d.png", w[2] - 1)}}, goods[w[2]])
  end
  return wrk.format("POST", nil, {{["Content-Type"] = "application/octet-stream",
                                   ["X-Filename"] = badnames[w[2]]}}, bads[w[2]])
end

response = function(status, headers, body)
  answered = answered + 1
  if answered > total then return end
  local i = body:match('"file":"(%d+)%.png"')
  if i ~= nil and status == 200 then
    good = good + 1
    if body:match('"class":"([^"]*)"') ~= classes[tonumber(i) + 1] then errors = errors + 1 end
  elseif status >= 400 and status < 500 and i == nil then
    bad = bad + 1
    bad4xx = bad4xx + 1
  else
    errors = errors + 1
  end
  if answered == total then
    local f = io.open("{finished}", "w")
    f:write(string.format('{{"good": %d, "bad": %d, "bad_4xx": %d, "errors": %d}}', good, bad, bad4xx, errors))
    f:close()
  end
end

done = function(summary, latency, requests)
  io.write(string.format('{{"latency_ms": {{"p50": %f, "p90": %f, "p99": %f, "max": %f}}, ' ..
    '"latency_of": "wrk: every request, bad ones too"}}\\n',
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def client_main(port: int, clients: int, d: str, mode: str) -> None:
    """The asyncio load generator (`--load`): one keep-alive connection per client, plain HTTP/1.1."""
    import asyncio

    spec = json.loads(Path(d, "work.json").read_text())
    work = [["good", i] for i in range(50)] if mode == "warm" else spec["work"]
    names = [f"{i:05d}.png" for i in range(len(spec["classes"]))]
    bad = bad_bodies()
    goods = {i: Path(d, "images", names[i]).read_bytes() for k, i in work if k == "good"}
    todo = iter(work)
    out = []

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for kind, i in todo:
            name, body = (names[i], goods[i]) if kind == "good" else bad[i]
            t = time.perf_counter()
            writer.write(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                         f"X-Filename: {name}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            data = json.loads(await reader.readexactly(length))
            seconds = time.perf_counter() - t
            cls = data["results"][0].get("class") if status == 200 else None
            out.append((kind, status, seconds, kind == "good" and (status != 200 or cls != spec["classes"][i])))
        writer.close()

    async def run():
        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t

    seconds = asyncio.run(run())
    lat = sorted(s for k, _, s, _ in out if k == "good")
    pct = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(json.dumps(dict(good=sum(k == "good" for k, *_ in out), bad=sum(k == "bad" for k, *_ in out),
                          bad_4xx=sum(k == "bad" and 400 <= st < 500 for k, st, *_ in out),
                          errors=sum(e for *_, e in out), seconds=seconds,
                          latency_ms=dict(p50=pct(0.5), p90=pct(0.9), p99=pct(0.99), max=1000 * lat[-1]),
                          latency_of="python client: the good requests")))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        client_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main()
