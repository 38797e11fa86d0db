"""`cnn export`: every format loaded back in its own runtime answers as the run does, the graph is
plain ops for every architecture, the metadata carries the preprocessing, `predict --model EXPORT`
gives the run directory's answer.

The round trip uses a small binary-head run (the seed's catsdogs net: max pooling, BatchNorm,
dropout, one sigmoid unit) trained on a folder of two digit classes, with test-time flips and a
scale and a calibration temperature, so each format carries every kind of piece of the graph (the
shifted views, 4 more copies of the network to compile, are traced in the plain-ops test); the digits run is shared with
test_evaluate.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnncli import export as E
from cnncli.errors import CnnError
from cnncli.evaluate import dataset_for
from cnncli.exported import load_export
from cnncli.models import abstract_model
from cnncli.models.layers import reference_ops
from cnncli.models.registry import ARCHS
from cnncli.predict import calibrated
from cnncli.runs import load_run
from cnncli.runs.infer import predict_fn
from test_evaluate import trained_run

# Primitives a converter or another runtime may not know, or that the fast forms use.
NOT_PLAIN = {"custom_vjp_call", "custom_vjp_call_jaxpr", "while", "scan", "optimization_barrier", "gather",
             "scatter", "scatter-add", "pure_callback"}


def two_digit_folder(root):
    """A photo-style image folder, classes "one" and "zero" (scikit-learn's digits, 40 each, RGB 24x24)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for label, name in ((0, "zero"), (1, "one")):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(d.images[d.target == label][:40]):
            pixels = np.round(img * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").resize((24, 24), Image.BILINEAR).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    folder = two_digit_folder(tmp_path_factory.mktemp("two") / "data")
    return trained_run(tmp_path_factory, "binary", arch="catsdogs", dataset=str(folder), image_size=32, epochs=1,
                       batch_size=16, tta_flip=True, tta_scales="0.8", val_split=0.2)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return trained_run(tmp_path_factory, "digits", dataset="digits")


@pytest.fixture(scope="module")
def exported(binary, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    return {f: E.export(binary["run_dir"], f, out=out / f"model{spec.suffix}") for f, spec in E.FORMATS.items()}


@pytest.mark.parametrize("fmt", list(E.FORMATS))
def test_each_format_answers_as_the_run(fmt, binary, exported):
    r = exported[fmt]
    assert r["max_abs_diff"] <= E.TOLERANCE and r["checkpoint"] == "best" and r["precision"] == "fp32"
    run = load_run(binary["run_dir"])
    x = dataset_for(run)[0].test.x
    model = load_export(r["file"])
    want, got = calibrated(run, run.probabilities(x)), model.probabilities(x)
    assert got.shape == want.shape == (len(x), 2)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    # The batch dimension is dynamic: one image, and a size never traced.
    assert np.abs(model.probabilities(x[:1]) - want[:1]).max() <= 1e-4
    assert np.abs(model.probabilities(x[:7]) - want[:7]).max() <= 1e-4
    meta = model.meta
    assert meta["classes"] == run.classes == ["one", "zero"] and meta["binary_head"] is True
    assert meta["input"]["shape"] == [None, 32, 32, 3] and meta["input"]["dtype"] == "uint8"
    assert meta["test_time_views"] == {"flip": True, "shift": 0, "scales": [0.8], "in_graph": True}
    assert run.calibration["temperature"] != 1.0  # fitted on the validation split: applied in the graph
    assert meta["calibration"]["temperature"] == run.calibration["temperature"]
    assert meta["normalization"]["mean"] == list(run.mean) and meta["digits"] is None
    assert meta["source"]["arch"] == "catsdogs" and meta["source"]["checkpoint"] == "best"
    assert meta["source"]["test_accuracy"] == pytest.approx(binary["test_accuracy"])
    # Metadata inside the file where the format has a place for it, else the JSON beside it.
    assert (r["metadata"] == r["file"]) == (fmt == "onnx")


def _primitives(jaxpr) -> set:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


@pytest.mark.parametrize("arch", list(ARCHS))
def test_exported_graph_is_plain_ops_for_every_arch(arch):
    shape = (64, 64, 3) if arch in ("vgg16", "resnet_photo") else (32, 32, 3)
    model = abstract_model(arch, shape, 10)  # shapes only: even VGG-16 traces at once
    predict, state = predict_fn(model, False, (0.5,) * 3, (0.25,) * 3, tta_flip=True, tta_shift=1,
                                  tta_scales=(0.8, 1.25), temperature=1.5)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("batch, %d, %d, 3" % shape[:2]), jnp.uint8)
    with reference_ops():
        prims = _primitives(jax.make_jaxpr(predict)(state, spec).jaxpr)
    assert "dot_general" in prims and ("conv_general_dilated" in prims or arch == "mlp")
    assert not prims & NOT_PLAIN


def test_predict_with_an_export_gives_the_run_directorys_answer(digits, tmp_path, run_cnn):
    run = load_run(digits["run_dir"])
    ds = dataset_for(run)[0]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(ds.test.x[:20]):
        Image.fromarray(img[..., 0]).save(folder / f"{i:02d}.png")
    code, out, _ = run_cnn("predict", folder, "--model", digits["run_dir"], "--json", "--top-k", "10")
    assert code == 0
    want = json.loads(out)
    for fmt in ("onnx", "stablehlo"):
        f = E.export(digits["run_dir"], fmt, out=tmp_path / f"digits{E.FORMATS[fmt].suffix}")["file"]
        code, out, _ = run_cnn("predict", folder, "--model", f, "--json", "--top-k", "10")
        assert code == 0
        got = json.loads(out)
        assert [r["class"] for r in got] == [r["class"] for r in want]
        for g, w in zip(got, want):
            assert g["note"] == w["note"]
            assert max(abs(a["probability"] - b["probability"]) for a, b in zip(g["top_k"], w["top_k"])) <= 1e-4


def test_last_checkpoint_and_default_path(digits):
    r = E.export(digits["run_dir"], "stablehlo", checkpoint="last")
    assert r["file"].endswith("export/last.stablehlo") and r["checkpoint"] == "last"
    meta = json.loads(open(r["metadata"]).read())
    assert meta["source"]["checkpoint"] == "last" and meta["source"]["epoch"] == 2
    assert meta["digits"]["box"] == 1.0  # scikit-learn's digits fill their frame (predict.DIGIT_BOX)


def test_user_errors_are_one_line(digits, tmp_path, monkeypatch, run_cnn):
    with pytest.raises(CnnError, match="--format must be one of onnx, stablehlo, savedmodel, tflite"):
        E.export(digits["run_dir"], "pt")
    with pytest.raises(CnnError, match="onnx's CPU runtime has no bfloat16 convolutions"):
        E.export(digits["run_dir"], "onnx", precision="bf16")
    fake = tmp_path / "page.onnx"
    fake.write_text("<html>not a model</html>")
    with pytest.raises(CnnError, match="cannot load as onnx"):
        load_export(fake)
    code, _, err = run_cnn("predict", fake, "--model", fake)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    with pytest.raises(CnnError, match=r"tflite export needs tensorflow: pip install -e '.\[export\]'"):
        E.export(digits["run_dir"], "tflite")


def test_predict_with_a_savedmodel_prints_no_tensorflow_log(digits, tmp_path):
    """TensorFlow's C++ start-up and CUDA-probe lines (on fd 2, past Python's sys.stderr) are not shown:
    a fresh `cnn predict` process, the user's environment without TF_CPP_MIN_LOG_LEVEL."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow (the export extra) is not installed: pip install -e '.[export]'")
    model = E.export(digits["run_dir"], "savedmodel", out=tmp_path / "digits.savedmodel")["file"]
    image = tmp_path / "zero.png"
    Image.fromarray(dataset_for(load_run(digits["run_dir"]))[0].test.x[0][..., 0]).save(image)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    done = subprocess.run([sys.executable, "-m", "cnncli.cli", "predict", str(image), "--model", model],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "zero.png" in done.stdout
    assert done.stderr == "", done.stderr
