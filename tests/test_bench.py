"""`cnn bench` runs end to end (tiny: 1 repeat of 1 step), and its arithmetic and peers are right."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from jaxlib.version import __version__ as jaxlib_version

from cnncli import bench, runtime
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
    assert proc.stderr.strip() == "error: unknown --vs peer 'mxnet'; choose from torch, keras"


def test_peer_notes_say_why_a_peer_is_skipped():
    assert bench.run_peer("torch", "resnet20", (32, 32, 3), 8, "train", 1, 1) == (
        [], "torch: no reference implementation of resnet20 (only net1, net2); skipped")


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


def test_peers_get_the_users_xla_flags(monkeypatch):
    # TensorFlow aborts on XLA flags it does not know, so the peer runs with the user's own.
    seen = {}

    def fake_run(cmd, env, **kw):
        seen.update(env=env)
        return subprocess.CompletedProcess(cmd, 0, stdout='{"framework": "keras", "images_per_s": 1.0}\n', stderr="")

    monkeypatch.setattr(runtime, "_user_xla_flags", "--mine")
    monkeypatch.setenv("XLA_FLAGS", f"--mine {runtime.YNN_FLAG}")
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    rows, note = bench.run_peer("keras", "net1", (28, 28, 1), 8, "train", 1, 1)
    assert note is None and rows == [{"framework": "keras", "images_per_s": 1.0}]
    assert seen["env"]["XLA_FLAGS"] == "--mine"


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
