"""`cnn bench` runs end to end (tiny: 1 repeat of 1 step), and its arithmetic and peers are right."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from jaxlib.version import __version__ as jaxlib_version

from cnncli import bench, runtime
from cnncli.errors import CnnError
from cnncli.models import count_params, create_model


def _cnn(*args):
    return subprocess.run([sys.executable, "-m", "cnncli.cli", *args], capture_output=True, text=True, timeout=600)


def test_bench_json_rows_for_train_and_infer():
    proc = _cnn("bench", "--arch", "net2", "--dataset", "digits", "--batch-size", "16", "--infer-batch-size", "32",
                "--repeats", "1", "--steps", "1", "--warmup", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["framework"], r["mode"], r["batch_size"]) for r in rows] == [("cnn", "train", 16), ("cnn", "infer", 32)]
    for r in rows:
        assert r["arch"] == "net2" and r["input_shape"] == [8, 8, 1]
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["gflops"] > 0 and 0 < r["peak_share"] and r["matmul_peak_gflops"] > 0
        assert r["compile_s"] > 0 and r["startup_s"] > 0
        assert r["cpu"] == bench.cpu_info()
    assert 0 <= rows[0]["pipeline_share"] < 1 and rows[0]["real_images_per_s"] > 0
    assert "matmul peak" in proc.stderr and "start-up" in proc.stderr and "cpu: " in proc.stderr


def test_cpu_info_names_the_widest_vector_extension():
    info = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert bench.cpu_info(info)["model"] == "AMD EPYC" and bench.cpu_info(info)["isa"] == "AVX2"
    assert bench.cpu_info(info.replace("avx2", "avx2 avx512f avx512bw"))["isa"] == "AVX-512"
    assert bench.cpu_info("")["model"] and bench.cpu_info("")["cores"] >= 1  # not Linux: from platform


def test_bench_rejects_unknown_peer_in_one_line():
    proc = _cnn("bench", "--vs", "mxnet", "--dataset", "digits")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --vs must be a comma list of torch, keras, onnxruntime, not 'mxnet'"


def test_peer_notes_say_why_a_peer_is_skipped():
    with pytest.raises(bench.PeerError, match=r"^torch: no reference implementation of resnet20 \(only net1, net2\); skipped$"):
        bench.Peer("torch", "resnet20", (32, 32, 3), 8, "train", 0)


def test_achieved_gflops_and_share_of_peak():
    row = bench.add_rates(dict(mode="train", images_per_s=100.0), flops_per_image=2_000_000, peak_gflops=10.0)
    assert row["gflops"] == pytest.approx(0.6) and row["peak_share"] == pytest.approx(0.06)
    row = bench.add_rates(dict(mode="infer", images_per_s=100.0), flops_per_image=2_000_000, peak_gflops=10.0)
    assert row["gflops"] == pytest.approx(0.2)


def test_allocator_tuning_applies_on_glibc():
    # In a child process: the tuning lasts for the process' life, and this one runs other tests.
    code = "from cnncli.runtime import tune_allocator; print(tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sys.platform == "linux")


_CONV_FUSION = """
import os, sys, jax, jax.numpy as jnp
from cnncli import runtime
applied = runtime.tune_xla()
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
print(applied, "__ynn_fusion" in hlo, os.environ["XLA_FLAGS"], repr(runtime.user_xla_flags()), sep="|")
"""


@pytest.mark.skipif(not jaxlib_version.startswith(runtime.YNN_JAXLIB), reason="flag known only to some jaxlibs")
@pytest.mark.parametrize("user_flags,applied", [
    ("", True), ("--xla_cpu_enable_fast_math=false", True),
    ("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution", False),
])
def test_xla_tuning_moves_convolutions_off_ynnpack_unless_the_user_chose(user_flags, applied):
    # In a child process: XLA reads the flags once, when JAX first computes.
    env = {**os.environ, "XLA_FLAGS": user_flags}
    out = subprocess.run([sys.executable, "-c", _CONV_FUSION], capture_output=True, text=True, env=env, check=True)
    got_applied, in_ynn, flags, user = out.stdout.strip().split("|")
    assert got_applied == str(applied) and in_ynn == str(not applied)  # XLA accepted the flag and obeys it
    assert flags == (f"{user_flags} {runtime.YNN_FLAG}".strip() if applied else user_flags)
    assert user == repr(user_flags)  # what peers (TensorFlow) get


def test_xla_tuning_leaves_other_jaxlibs_alone(monkeypatch):
    # XLA aborts at start on a flag it does not know, so a jaxlib not known to have it gets nothing.
    monkeypatch.setattr(runtime, "YNN_JAXLIB", ("0.0.",))
    monkeypatch.setattr(runtime, "_user_xla_flags", None)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert runtime.tune_xla() is False and os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"


FAKE_REF = """
import os, sys, time
sys.path.insert(0, {bench_dir!r})
from _common import parse_args, serve
args = parse_args("fake")
if os.environ.get("FAKE_FAIL"):
    raise SystemExit("fake: cannot build " + args.arch)
calls = [0]


def step():
    calls[0] += 1
    if calls[0] == int(os.environ.get("FAKE_CRASH_AT", 0)):
        raise RuntimeError("step %d crashed" % calls[0])
    time.sleep(0.002)


print("a framework's own line on stdout", flush=True)
# The version field carries what the test checks: the XLA flags the peer got.
serve("fake", os.environ.get("XLA_FLAGS", ""), step, args)
"""


@pytest.fixture
def fake_peer(monkeypatch, tmp_path):
    """A peer reference script (benchmarks/_common.py's --serve loop, each step a 2 ms sleep)."""
    (tmp_path / "fake_ref.py").write_text(FAKE_REF.format(bench_dir=str(bench.BENCH_DIR)))
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    monkeypatch.setitem(bench.PEERS, "fake", "json")  # any importable module stands for the framework


def test_peer_serves_timed_blocks_with_the_users_xla_flags(fake_peer, monkeypatch):
    # TensorFlow aborts on XLA flags it does not know, so the peer runs with the user's own.
    monkeypatch.setattr(runtime, "_user_xla_flags", "--mine")
    monkeypatch.setenv("XLA_FLAGS", f"--mine {runtime.YNN_FLAG}")
    peer = bench.Peer("fake", "net2", (8, 8, 1), 4, "train", 1)
    try:
        assert peer.info["framework"] == "fake" and peer.info["version"] == "--mine" and peer.info["warmup_s"] > 0
        assert 0.02 <= peer.block(10) < 5  # ten 2 ms steps, timed inside the peer
    finally:
        peer.close()
    assert peer.proc.returncode == 0  # it ended at the end of its input


def test_peer_failure_is_one_line_from_its_stderr(fake_peer, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(bench.PeerError, match=r"^fake: failed \(fake: cannot build net1\)$"):
        bench.Peer("fake", "net1", (8, 8, 1), 4, "train", 0)


def test_bench_rows_and_speedups_with_a_peer(fake_peer):
    """In-process (the fake peer is registered here only): cnn's rows first, then the peer's, each peer
    row with cnn's speed-up over it, from groups timed alternately."""
    from typer.testing import CliRunner

    from cnncli.cli import app

    r = CliRunner().invoke(app, ["bench", "--arch", "net2", "--dataset", "digits", "--vs", "fake", "--repeats", "2",
                                 "--steps", "2", "--warmup", "0", "--no-pipeline", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [(x["framework"], x["mode"]) for x in rows] == [("cnn", "train"), ("cnn", "infer"), ("fake", "train"),
                                                           ("fake", "infer")]
    for cnn, peer in zip(rows[:2], rows[2:]):
        assert peer["repeats"] == cnn["repeats"] == 2 and peer["steps"] == 2 and peer["input_shape"] == [8, 8, 1]
        assert peer["images_per_s"] < peer["batch_size"] * 2 / 0.004  # a group: two steps of a 2 ms sleep each
        assert peer["cnn_speedup"] == pytest.approx(cnn["images_per_s"] / peer["images_per_s"])
        assert "startup_s" in cnn and "startup_s" not in peer and peer["cpu"] == cnn["cpu"]


def test_peer_crash_mid_run_is_a_one_line_error(fake_peer, monkeypatch):
    monkeypatch.setenv("FAKE_CRASH_AT", "3")  # the warm-up step is the first; the first block's second step crashes
    peer = bench.Peer("fake", "net2", (8, 8, 1), 4, "train", 0)
    with pytest.raises(CnnError, match=r"^fake: failed \(RuntimeError: step 3 crashed\)$"):
        peer.block(2)


def test_peer_gone_between_groups_is_a_one_line_error(fake_peer):
    # Killed while idle (say by the OOM killer): the next request meets a closed pipe, not a traceback.
    peer = bench.Peer("fake", "net2", (8, 8, 1), 4, "train", 0)
    peer.proc.kill()
    peer.proc.wait()
    with pytest.raises(CnnError, match=r"^fake: failed \(no output\)$"):
        peer.block(2)


def test_serve_times_one_mode_only(fake_peer):
    proc = subprocess.run([sys.executable, str(bench.BENCH_DIR / "fake_ref.py"), "--serve", "--mode", "both"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        "error: --serve times one mode: --mode train or --mode infer")


def test_bench_notes_a_peer_that_cannot_start_once_and_goes_on(fake_peer, monkeypatch):
    from typer.testing import CliRunner

    from cnncli.cli import app

    monkeypatch.setenv("FAKE_FAIL", "1")
    r = CliRunner().invoke(app, ["bench", "--arch", "net2", "--dataset", "digits", "--vs", "fake", "--repeats", "1",
                                 "--steps", "1", "--warmup", "0", "--no-pipeline", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [(x["framework"], x["mode"]) for x in rows] == [("cnn", "train"), ("cnn", "infer")]
    assert r.output.count("fake: failed (fake: cannot build net2)") == 1  # not tried again for infer


def test_interleave_rotates_the_frameworks_each_round():
    calls = []
    blocks = {name: (lambda steps, name=name: calls.append((name, steps)) or len(calls)) for name in "abc"}
    seconds = bench.interleave(blocks, repeats=4, steps=7)
    assert [n for n, _ in calls] == list("abc" "bca" "cab" "abc") and {s for _, s in calls} == {7}
    assert seconds == {"a": [1, 6, 8, 10], "b": [2, 4, 9, 11], "c": [3, 5, 7, 12]}
    assert bench.rates([0.5, 1.0, 0.25], batch_size=8, steps=4) == dict(
        images_per_s=64.0, images_per_s_min=32.0, images_per_s_max=128.0, repeats=3, steps=4)


def _load_ref(name):
    spec = importlib.util.spec_from_file_location(name, bench.BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed (pip install -e .[bench])")
@pytest.mark.parametrize("arch,shape", [("net1", (28, 28, 1)), ("net2", (32, 32, 3))])
def test_torch_reference_is_the_same_network(arch, shape):
    model = _load_ref("torch_ref").build(arch, shape, 10)
    assert sum(p.numel() for p in model.parameters()) == count_params(create_model(arch, shape, 10))[0]


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="tensorflow not installed (pip install -e .[bench])")
@pytest.mark.parametrize("arch,shape", [("net1", (28, 28, 1)), ("net2", (32, 32, 3))])
def test_keras_reference_is_the_same_network(arch, shape):
    model = _load_ref("keras_ref").build(arch, shape, 10)
    assert model.count_params() == count_params(create_model(arch, shape, 10))[0]


def test_peers_run_in_the_benchmarks_precision(fake_peer):
    """`--precision bf16` reaches the peer (its ready line says it ran so) and every row carries it."""
    from typer.testing import CliRunner

    from cnncli.cli import app

    r = CliRunner().invoke(app, ["bench", "--arch", "net2", "--dataset", "digits", "--vs", "fake", "--repeats", "1",
                                 "--steps", "1", "--warmup", "0", "--no-pipeline", "--modes", "infer",
                                 "--precision", "bf16", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [(x["framework"], x["precision"]) for x in rows] == [("cnn", "bf16"), ("fake", "bf16")]
    r = CliRunner().invoke(app, ["bench", "--precision", "fp16"])
    assert r.exit_code == 2 and "fp16" in r.output


def test_onnxruntime_times_cnns_own_export_on_the_inference_rows():
    """--vs onnxruntime: cnn's network (any arch, here fastcnn, which has no torch/keras reference) exported
    and timed in ONNX Runtime; an inference row only, as ONNX Runtime does not train."""
    from typer.testing import CliRunner

    from cnncli.cli import app

    r = CliRunner().invoke(app, ["bench", "--arch", "fastcnn", "--input-shape", "28,28,1", "--vs", "onnxruntime",
                                 "--modes", "train,infer", "--repeats", "1", "--steps", "1", "--warmup", "0",
                                 "--batch-size", "8", "--no-pipeline", "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [(x["framework"], x["mode"]) for x in rows] == [("cnn", "train"), ("cnn", "infer"), ("onnxruntime", "infer")]
    peer = rows[2]
    assert peer["version"].startswith("onnxruntime ") and peer["arch"] == "fastcnn" and peer["images_per_s"] > 0
