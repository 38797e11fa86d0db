"""`cnn bench`: steady-state images/s of the real train and inference steps, against the machine and peers.

What is timed is what `cnn train` runs: the model from the registry and the engine's jitted
`make_train_step` / `make_eval_step` (uint8 batches in, normalisation inside the step). Compilation
(the first call) and warm-up are timed apart; then `repeats` groups of `steps` steps each give
images/s, reported as median, min and max. Steps inside a group are dispatched asynchronously,
as in training, and the group ends when the last result exists. With peers, the frameworks' groups
alternate (`interleave`): a shared VM's speed drifts by 10-20% over minutes, which timed one
framework after the other moved the ratios between runs by as much (net2 against Keras 1.10-1.34x).

Also measured in the same run, so the numbers share the machine's state at that moment:
- the matmul peak: a large fp32 `jnp.dot` (GFLOP/s), the yardstick for the achieved GFLOP/s;
- the input pipeline's share: real batches from the data set (the engine's prefetching loader)
  against synthetic batches already on the device;
- the start-up time of `cnn --help`;
- peers: the same network in PyTorch and Keras (benchmarks/*_ref.py), each in a subprocess that
  stays up (`Peer`) and times one group per request.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import CnnError
from .timing import Timer, interleave, rates  # noqa: F401 - the peers' steps are timed alike
from .runtime import user_xla_flags

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
PEERS = {"torch": "torch", "keras": "tensorflow", "onnxruntime": "onnxruntime"}  # -> module that must be importable
MODES = ("train", "infer")
PEER_ARCHS = ("net1", "net2")
# Peers that run cnn's own network, exported (export.py), rather than a reference rewritten in their
# framework: any architecture, inference only (ONNX Runtime does not train).
EXPORT_PEERS = ("onnxruntime",)
TRAIN_FLOPS_FACTOR = 3  # forward + input gradient + weight gradient, each about one forward


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, precision: str = "fp32") -> float:
    """Median GFLOP/s of an n x n `jnp.dot` (2 n^3 FLOPs), compilation excluded; in bf16 with bf16
    operands and fp32 accumulation, as the layers compute (a bf16 result gains nothing on AMX)."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    dot(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dot(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The host's CPU model, usable cores and widest x86 vector extension, for the record.

    Same-run ratios are what compare; but figures move with the host (oneDNN lost 4x on one
    2-core VM, and XLA gains less than oneDNN from AVX-512), so every run says what it ran on.
    """
    from .host import cpu

    return cpu(cpuinfo)


def startup_seconds(repeats: int = 3) -> float:
    """Median wall time of `cnn --help` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnncli.cli", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class _Setup:
    """The model, its engine steps and a synthetic uint8 batch for one (arch, shape, classes)."""

    def __init__(self, arch: str, input_shape, num_classes: int, seed: int = 0, precision: str = "fp32"):
        import optax

        from .models import create_model
        from .train.step import TrainState, split

        c = input_shape[-1]
        self.mean, self.std = (0.5,) * c, (0.25,) * c  # values do not matter for speed
        gtrain, self.geval, params, rest = split(create_model(arch, tuple(input_shape), num_classes, seed=seed))
        self.gtrain = gtrain
        self.tx = optax.adam(1e-3)  # net1/net2's optimizer, as in the peers
        self.state = TrainState(params, rest, self.tx.init(params), None)
        self.arch, self.input_shape, self.num_classes = arch, tuple(input_shape), num_classes
        self.precision = precision

    def batch(self, batch_size: int, seed: int = 0):
        import jax
        import numpy as np

        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (batch_size, *self.input_shape), dtype=np.uint8)
        y = rng.integers(0, self.num_classes, batch_size).astype(np.int32)
        return jax.device_put(x), jax.device_put(y), jax.device_put(np.arange(batch_size, dtype=np.int32))

    def train_step(self, batch_size: int, gather: bool = False):
        """The engine's step, with or without its ops' oneDNN choices as `cnn train` decides (the whole
        step timed both ways, tuner.kernels_in_step)."""
        import numpy as np

        from . import tuner
        from .train.step import make_train_step, zero_metrics

        def step(use_kernels, jit=False):
            return make_train_step(self.gtrain, self.tx, binary=False, mean=self.mean, std=self.std,
                                   gather=gather and jit, precision=self.precision, jit=jit, use_kernels=use_kernels)

        def inputs():
            x, y, idx = self.batch(batch_size)
            return self.state, zero_metrics(), x, y, idx, np.int32(0)

        key = (self.arch, self.input_shape, batch_size, self.num_classes, (), self.precision)
        return step(tuner.kernels_in_step(key, step, inputs), jit=True)


def tune_layers(setup: _Setup, sizes: dict, modes) -> float:
    """Trace the train and inference steps so that the tuner measures every layer they meet; seconds.
    Tracing is enough (each layer asks while traced); the steps are compiled later, when timed."""
    import jax.numpy as jnp
    import numpy as np

    from .runs.infer import make_eval_step
    from .train.step import zero_metrics

    t = time.perf_counter()
    if "train" in modes:
        x, y, idx = setup.batch(sizes["train"])
        setup.train_step(sizes["train"]).lower(setup.state, zero_metrics(), x, y, idx, np.int32(0))
    if "infer" in modes:
        x, y, _ = setup.batch(sizes["infer"])
        step = make_eval_step(setup.geval, binary=False, mean=setup.mean, std=setup.std, precision=setup.precision)
        step.lower(setup.state.params, setup.state.rest, x, y, jnp.ones((len(y),), jnp.float32))
    return time.perf_counter() - t


def train_timer(setup: _Setup, batch_size: int, warmup: int = 2) -> Timer:
    """The engine's train step on a synthetic batch already on the device; `setup.state` follows it."""
    import jax
    import numpy as np

    from .train.step import zero_metrics

    step = setup.train_step(batch_size)
    x, y, idx = setup.batch(batch_size)
    carry = {"metrics": zero_metrics(), "i": 0}

    def run():  # the old state's buffers are donated, so setup.state always holds the new one
        setup.state, carry["metrics"] = step(setup.state, carry["metrics"], x, y, idx, np.int32(carry["i"]))
        carry["i"] += 1
        return carry["metrics"]

    return Timer(run, jax.block_until_ready, warmup)


def infer_timer(setup: _Setup, batch_size: int, warmup: int = 2) -> Timer:
    """The engine's eval step (logits, loss, accuracy) on a synthetic batch."""
    import jax
    import jax.numpy as jnp

    from .runs.infer import make_eval_step

    step = make_eval_step(setup.geval, binary=False, mean=setup.mean, std=setup.std, precision=setup.precision)
    x, y, _ = setup.batch(batch_size)
    w = jnp.ones((batch_size,), jnp.float32)
    return Timer(lambda: step(setup.state.params, setup.state.rest, x, y, w), jax.block_until_ready, warmup)


def pipeline_share(setup: _Setup, dataset, batch_size: int, steps: int, synthetic_rate: float) -> dict:
    """Train images/s on real batches (the engine's loader) and the share of time the input costs."""
    import jax
    import numpy as np

    from .train.feed import Feeder, mesh
    from .train.step import zero_metrics

    n = len(dataset.train.y)
    if n < batch_size * 2:
        return dict(pipeline_note=f"only {n} training images: pipeline not measured")
    feeder = Feeder(mesh(), dataset.train.x, dataset.train.y)  # exactly what `cnn train` uses
    step = setup.train_step(batch_size, gather=feeder.resident)
    state, metrics = setup.state, zero_metrics()
    order = np.random.default_rng(0).permutation(n)
    # First pass compiles for the real input and warms the loader; the second is timed.
    for timed in (False, True):
        t = time.perf_counter()
        done = 0
        for i, batch in enumerate(feeder.epoch(order, batch_size)):
            state, metrics = step(state, metrics, *batch, np.int32(i))
            done += 1
            if done == (steps if timed else 2):
                break
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - t
    setup.state = state
    real = done * batch_size / elapsed
    return dict(real_images_per_s=real, pipeline_share=max(0.0, 1.0 - real / synthetic_rate))


class PeerError(CnnError):
    """A peer could not run (not installed, no reference of the architecture, or it failed): why, in one
    line. At start-up `cnn bench` notes it and goes on without that peer; mid-run it ends the command."""


class Peer:
    """A peer's reference script in `--serve` mode: started and warmed up once, then `block(steps)`
    times one group of steps in it (seconds, measured by the peer around its own steps)."""

    def __init__(self, framework: str, arch: str, input_shape, batch_size: int, mode: str, warmup: int,
                 precision: str = "fp32", model: str | None = None):
        if framework not in PEERS:
            raise PeerError(f"unknown peer {framework!r} (choose from {', '.join(PEERS)})")
        if framework not in EXPORT_PEERS and arch not in PEER_ARCHS:
            raise PeerError(f"{framework}: no reference implementation of {arch} (only {', '.join(PEER_ARCHS)}); skipped")
        if importlib.util.find_spec(PEERS[framework]) is None:
            raise PeerError(f"{framework}: not installed (pip install -e '.[bench]'); skipped")
        cmd = [sys.executable, str(BENCH_DIR / f"{framework}_ref.py"), "--arch", arch,
               "--input-shape", ",".join(map(str, input_shape)), "--batch-size", str(batch_size), "--mode", mode,
               "--warmup", str(warmup), "--precision", precision, "--serve"] + (["--model", model] if model else [])
        env = {**os.environ, "XLA_FLAGS": user_xla_flags()}
        self.framework = framework
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: TensorFlow's logging cannot fill it and stall
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=env)
        self.info = self._reply()  # framework, version, warmup_s, precision
        if self.info.get("precision", "fp32") != precision:  # like against like, or not at all
            self.close()
            raise PeerError(f"{framework}: ran in {self.info.get('precision', 'fp32')}, not {precision}; skipped")

    def _reply(self) -> dict:
        for line in self.proc.stdout:  # the next JSON line; a framework's own prints are skipped
            if line.startswith("{"):
                return json.loads(line)
        self.stderr.seek(0)  # end of output: the peer died; its last line of stderr says why
        last = (self.stderr.read().strip().splitlines() or ["no output"])[-1]
        self.close()
        raise PeerError(f"{self.framework}: failed ({last[:200]})")

    def block(self, steps: int) -> float:
        try:
            self.proc.stdin.write(f"{steps}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it is gone: _reply finds its output ended and says why, from its stderr
        return self._reply()["seconds"]

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # the peer ends at end of input
            except BrokenPipeError:  # the close flushes a request it can no longer read
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def measure(setup: _Setup, mode: str, batch_size: int, peers: list[str], *, repeats: int, steps: int,
            warmup: int, flops: int, peak: float) -> tuple[list[dict], dict[str, str]]:
    """One mode's rows, cnn's then each peer's (with `cnn_speedup`), from groups timed alternately; and
    {peer: why} for the peers that could not start (the others run without them)."""
    from .console import task_progress

    procs, failed = [], {}
    exported = None
    for peer in peers:
        if peer in EXPORT_PEERS and mode != "infer":
            continue  # no train row for an inference runtime
        try:
            if peer in EXPORT_PEERS and exported is None:
                exported = onnx_file(setup)
            procs.append(Peer(peer, setup.arch, setup.input_shape, batch_size, mode, warmup, setup.precision,
                              str(exported) if peer in EXPORT_PEERS else None))
        except PeerError as e:
            failed[peer] = str(e)
    try:
        timer = (train_timer if mode == "train" else infer_timer)(setup, batch_size, warmup)
        blocks = {"cnn": timer.block, **{p.framework: p.block for p in procs}}
        # The bar starts after compiling: the timed groups are what takes the time, and their count is known.
        with task_progress(f"timing {mode}: {', '.join(blocks)}", repeats * len(blocks), "groups") as advance:
            seconds = interleave(blocks, repeats, steps, progress=advance)
    finally:
        for p in procs:
            p.close()
    common = dict(arch=setup.arch, input_shape=list(setup.input_shape), batch_size=batch_size, mode=mode,
                  precision=setup.precision)
    cnn = add_rates(dict(framework="cnn", **common, **rates(seconds["cnn"], batch_size, steps),
                         compile_s=timer.compile_s, warmup_s=timer.warmup_s, matmul_peak_gflops=peak), flops, peak)
    rows = [cnn]
    for p in procs:
        row = add_rates(dict(p.info, **common, **rates(seconds[p.framework], batch_size, steps)), flops, peak)
        rows.append(dict(row, cnn_speedup=cnn["images_per_s"] / row["images_per_s"]))
    return rows, failed


def onnx_file(setup: _Setup) -> Path:
    """The setup's network, with its current weights, as `cnn export --format onnx` writes it (uint8 in,
    normalisation inside), for the onnxruntime peer; in a temporary folder."""
    from flax import nnx

    from . import export
    from .runs.infer import predict_fn

    if importlib.util.find_spec("jax2onnx") is None:
        raise PeerError(f"onnxruntime: exporting the model needs jax2onnx ({export.EXTRA_HINT}); skipped")
    predict, state = predict_fn(nnx.merge(setup.geval, setup.state.params, setup.state.rest), False,
                                setup.mean, setup.std)
    path = Path(tempfile.mkdtemp(prefix="cnn-bench-")) / "model.onnx"
    export.write(lambda x: predict(state, x), "onnx", setup.input_shape, path)
    return path


def add_rates(row: dict, flops_per_image: int, peak_gflops: float) -> dict:
    """Add achieved GFLOP/s (from the architecture's FLOP count) and its share of the matmul peak."""
    factor = TRAIN_FLOPS_FACTOR if row["mode"] == "train" else 1
    row["gflops"] = row["images_per_s"] * flops_per_image * factor / 1e9
    row["peak_share"] = row["gflops"] / peak_gflops if peak_gflops else None
    return row
