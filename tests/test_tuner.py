"""The tuner: measured once, kept on disk per host, measured again when the key or host changes,
never fatal. The candidates differ in work by a factor of ~500 so that which one wins cannot
depend on the machine's load."""

import json
import threading

import jax
import jax.numpy as jnp
import pytest

from cnncli import host, tuner
from cnncli.models import layers
from cnncli import precision


@pytest.fixture
def tuning(fresh_cache, monkeypatch):
    monkeypatch.setenv("CNN_TUNE", "1")
    tuner.reset()
    yield fresh_cache
    tuner.reset()


def _slow(x):
    for _ in range(500):
        x = jnp.tanh(x @ x)
    return x


CANDS = {"xla": _slow, "fast": lambda x: x + 1}
INPUTS = lambda: (jnp.ones((64, 64)),)  # noqa: E731


def test_choice_is_measured_once_and_kept_on_disk(tuning, capsys):
    assert tuner.choose("op", (64,), CANDS, INPUTS) == "fast"
    assert "measuring the fastest form" in capsys.readouterr().err
    doc = json.loads(tuner.path().read_text())
    (entry,) = doc["hosts"].values()
    assert entry["host"]["cpu"] and entry["host"]["jax"] == jax.__version__
    assert entry["ops"]["op(64,)"]["choice"] == "fast"
    tuner.reset()  # a new process: read back, not measured (these candidates would fail if timed)
    broken = {"xla": None, "fast": None}
    assert tuner.choose("op", (64,), broken, INPUTS) == "fast"
    assert tuner.measured() == []


def test_fewer_candidates_than_measured_are_answered_from_the_record(tuning):
    """A whole-step comparison traces a step with the oneDNN kernels off: each op then takes the
    fastest of its other candidates by the times already recorded, measuring nothing."""
    three = {"xla": _slow, "fast": lambda x: x + 1, "faster": lambda x: x}
    tuner.choose("op", (64,), three, INPUTS)
    measured = len(tuner.measured())
    ms = tuner.choices()["op(64,)"]["ms"]
    rest = {n: None for n in three if n != tuner.choices()["op(64,)"]["choice"]}  # never run: not timed
    assert tuner.choose("op", (64,), rest, INPUTS) == min(rest, key=ms.get)
    assert len(tuner.measured()) == measured


def test_changed_key_or_host_measures_again(tuning, monkeypatch):
    tuner.choose("op", (64,), CANDS, INPUTS)
    tuner.choose("op", (65,), CANDS, INPUTS)
    assert [k for k, _, _ in tuner.measured()] == ["op(64,)", "op(65,)"]
    real = tuner.host
    monkeypatch.setattr(tuner, "host", lambda: real() | {"cpu": "Another CPU"})
    tuner.reset()
    tuner.choose("op", (64,), CANDS, INPUTS)
    assert len(tuner.measured()) == 1
    assert len(json.loads(tuner.path().read_text())["hosts"]) == 2  # both hosts' tables kept


def test_corrupt_cache_is_measured_again_with_a_note(tuning, capsys):
    tuner.path().parent.mkdir(parents=True, exist_ok=True)
    tuner.path().write_text("{not json")
    assert tuner.choose("op", (64,), CANDS, INPUTS) == "fast"
    assert "unreadable" in capsys.readouterr().err
    assert json.loads(tuner.path().read_text())["version"] == tuner.VERSION


def test_retune_measures_each_op_again_once(tuning):
    tuner.choose("op", (64,), CANDS, INPUTS)
    tuner.reset()
    tuner.retune()
    tuner.choose("op", (64,), CANDS, INPUTS)
    tuner.choose("op", (64,), CANDS, INPUTS)
    assert len(tuner.measured()) == 1


def test_fallback_is_the_plain_op(tuning, monkeypatch):
    """Off, under plain(), or when every other candidate fails: the first candidate, XLA's op."""
    def boom(x):
        raise RuntimeError("cannot compile")
    assert tuner.choose("op", (1,), {"xla": _slow, "bad": boom}, INPUTS) == "xla"
    with tuner.plain():
        assert tuner.choose("op", (2,), CANDS, INPUTS) == "xla"
    monkeypatch.setenv("CNN_TUNE", "0")
    assert tuner.choose("op", (3,), CANDS, INPUTS) == "xla"
    assert [k for k, _, _ in tuner.measured()] == ["op(1,)"]


def test_a_model_layer_asks_for_each_direction(tuning):
    """A convolution's forward, input and kernel gradients and the pooling are measured while the
    step is traced; the values are the plain op's whatever was chosen."""
    x, k = jnp.ones((4, 8, 8, 3)), jnp.ones((3, 3, 3, 8)) * 0.1

    def loss(x, k):
        return layers.max_pool(layers.conv2d(x, k)).sum()

    g = jax.jit(jax.grad(loss, (0, 1)))(x, k)
    ops = {key.split("(")[0] for key, _, _ in tuner.measured()}
    assert {"conv_fwd", "conv_igrad", "conv_kgrad", "maxpool_fwd", "maxpool_bwd"} <= ops
    with layers.reference_ops():
        want = jax.grad(loss, (0, 1))(x, k)
    for a, b in zip(g, want):
        assert jnp.allclose(a, b, rtol=1e-5, atol=1e-4)


def test_a_networks_input_gradient_is_neither_computed_nor_measured(tuning):
    x, k = jnp.ones((4, 8, 8, 3)), jnp.ones((3, 3, 3, 8)) * 0.1
    jax.jit(jax.grad(lambda k: layers.conv2d(x, k).sum()))(k)
    assert {key.split("(")[0] for key, _, _ in tuner.measured()} == {"conv_fwd", "conv_kgrad"}


def test_candidates_are_compiled_side_by_side_and_a_failing_one_is_dropped(tuning, monkeypatch):
    monkeypatch.setattr(host, "cores", lambda: 2)
    boom = lambda x: x.reshape(7, -1)  # noqa: E731 - 4096 values: fails while lowering
    assert tuner.choose("op", (7,), {"xla": _slow, "bad": boom, "fast": lambda x: x + 1}, INPUTS) == "fast"
    assert set(tuner.choices()["op(7,)"]["ms"]) == {"xla", "fast"}


def test_candidates_that_measure_their_own_layers_do_so_one_after_the_other(tuning, monkeypatch):
    """A whole step or an inference slice is a candidate whose layers are measured while it is
    traced: that tracing must stay in this thread, or two measurements would share the cores."""
    monkeypatch.setattr(host, "cores", lambda: 2)
    threads = []

    def outer(tag):
        def step(x):
            threads.append(threading.current_thread())
            tuner.choose("inner", (tag,), CANDS, INPUTS)
            return x + 1
        return step

    tuner.choose("outer", (1,), {"xla": outer("a"), "b": outer("b")}, INPUTS)
    assert threads and set(threads) == {threading.main_thread()}
    assert {"inner('a',)", "inner('b',)"} <= {k for k, _, _ in tuner.measured()}


AMX = "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX2 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n"


def test_auto_precision_is_fp32_without_bf16_hardware(tuning):
    never = {"fp32": None, "bf16": None}  # not measured: the CPU decides first
    assert precision.resolve("auto", ("k",), never, INPUTS, cpuinfo=AVX2)[0] == "fp32"
    assert precision.bf16_capable(AMX) == "amx_bf16" and precision.bf16_capable(AVX2) is None
    assert precision.resolve("bf16", ("k",), never, INPUTS, cpuinfo=AVX2) == ("bf16", "as asked")


def test_auto_precision_takes_the_measured_faster_step(tuning):
    choice, why = precision.resolve("auto", ("k",), {"fp32": _slow, "bf16": lambda x: x + 1}, INPUTS, cpuinfo=AMX)
    assert choice == "bf16" and "amx_bf16" in why and "measured" in why


def test_measuring_on_a_busy_machine_says_so_once(tuning, monkeypatch, capsys):
    monkeypatch.setattr(tuner.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    monkeypatch.setattr(tuner, "_warned_busy", False)
    tuner.choose("op", (64,), CANDS, INPUTS)
    tuner.choose("op", (65,), CANDS, INPUTS)
    err = capsys.readouterr().err
    assert err.count("the machine is busy (load 99.0") == 1 and "cnn bench --tune" in err
    assert json.loads(tuner.path().read_text())["hosts"].popitem()[1]["ops"]["op(64,)"]["load"] == 99.0


def test_bench_tune_measures_every_layer_again(tuning):
    """`cnn bench --tune` re-measures the layers it is about to time and says how many, and where."""
    from typer.testing import CliRunner

    from cnncli.cli import app

    args = ["bench", "--arch", "net2", "--dataset", "digits", "--modes", "infer", "--repeats", "1", "--steps", "1",
            "--warmup", "0", "--no-pipeline", "--tune"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "tuned" in r.output and str(tuner.path()) in r.output
    first = len(tuner.measured())
    assert first >= 3  # net2's two convolutions and its dense layers, forward
    tuner.reset()
    r = CliRunner().invoke(app, args)  # again: measured again, not read back
    assert r.exit_code == 0 and len(tuner.measured()) == first


def test_train_records_the_precision_auto_resolved_to(run_cnn, tmp_path):
    """`--precision auto` (the default) prints its choice and config.json keeps the resolved one;
    measuring off (the suite's CNN_TUNE=0), it is fp32."""
    code, out, err = run_cnn("train", "--arch", "net2", "--dataset", "digits", "--epochs", "1", "--out", tmp_path)
    assert code == 0, err
    assert "precision: fp32 (auto:" in out + err
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "config.json").read_text())["precision"] == "fp32"
