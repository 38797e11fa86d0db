"""Accuracy levers of #31: random-resized crops in the train step, test-time views at other scales,
and a 10-class run's head starting a 2-class one (--init-from by class name)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnncli.errors import CnnError
from cnncli.train import resolve
from cnncli.train.augment import augment, resized_crops, rrc_boxes
from cnncli.checks import scale_list
from cnncli.train.config import rrc_min_scale
from cnncli.runs.infer import tta_views, zoomed_view
from test_evaluate import trained_run


def batch(n=4, h=16, w=12, c=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random((n, h, w, c)), jnp.float32)


def test_resized_crop_is_a_bilinear_resize_of_the_box():
    x = batch()
    whole = jnp.array([[0, 0, 16, 12]] * 4, jnp.float32)
    assert jnp.array_equal(resized_crops(x, whole), x)  # the whole image: every pixel on its own centre
    box = jnp.array([[3, 1, 8, 6], [0, 0, 16, 6], [8, 6, 8, 6], [2, 2, 12, 9]], jnp.float32)
    got = resized_crops(x, box)
    for i, (t, l, h, w) in enumerate(np.asarray(box, int)):
        want = jax.image.resize(x[i, t : t + h, l : l + w], (16, 12, 3), "bilinear")
        np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_rrc_boxes_cover_wide_scales_and_aspect_ratios_inside_the_image():
    b = np.asarray(rrc_boxes(jax.random.key(0), 4000, 64, 48, 0.25))
    top, left, h, w = b.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64 + 1e-4).all() and (left + w <= 48 + 1e-4).all()
    area, ratio = h * w / (64 * 48), w / h
    assert area.min() >= 0.25 - 1e-5 and area.max() <= 1 + 1e-5 and area.min() < 0.27 and area.max() > 0.9
    inside = (h < 64 - 1e-3) & (w < 48 - 1e-3)  # boxes not clipped by the image keep their drawn ratio
    assert ratio[inside].min() >= 0.75 - 1e-4 and ratio[inside].max() <= 4 / 3 + 1e-4
    assert ratio[inside].min() < 0.8 and ratio[inside].max() > 1.25 and np.ptp(top) > 20 and np.ptp(left) > 10


def test_rrc_in_the_augmentation_is_seeded_and_keeps_the_range():
    x = batch(8)
    a, b = (augment(jax.random.key(1), x, ("rrc",)) for _ in range(2))
    c = augment(jax.random.key(2), x, ("rrc",))
    assert jnp.array_equal(a, b) and not jnp.array_equal(a, c) and a.shape == x.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    whole = augment(jax.random.key(1), x, ("rrc:1",))  # area 100%: aspect changes only, some crop each
    assert whole.shape == x.shape
    assert rrc_min_scale(["flip", "rrc"]) == 0.25 and rrc_min_scale(["rrc:0.5"]) == 0.5 and rrc_min_scale(["crop"]) is None
    # With flip, the mirror is folded into the crop (see augment): the same images as mirroring after it.
    key = jax.random.key(7)
    flip = jax.random.bernoulli(jax.random.split(key, 4)[0], 0.5, (8, 1, 1, 1))
    crop = resized_crops(x, rrc_boxes(jax.random.fold_in(key, 5), 8, 16, 12, 0.25))
    assert 0 < int(flip.sum()) < 8
    np.testing.assert_allclose(augment(key, x, ("rrc", "flip")), jnp.where(flip, crop[:, :, ::-1], crop), atol=1e-6)
    for bad in ("rrc:0", "rrc:1.5", "rrc:x"):
        with pytest.raises(CnnError, match="rrc:S takes the smallest crop's share"):
            resolve({"augment": bad})


def test_zoomed_views_and_their_count():
    x = batch(2, 8, 8, 1)
    np.testing.assert_allclose(zoomed_view(x, 0.5), jax.image.resize(x[:, 2:6, 2:6], (2, 8, 8, 1), "bilinear"),
                               atol=1e-6)
    padded = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_allclose(zoomed_view(x, 1.5), jax.image.resize(padded, (2, 8, 8, 1), "bilinear",
                                                                     antialias=True), atol=1e-6)
    views = tta_views(x, flip=True, shift=1, scales=(0.75, 1.25))
    assert len(views) == (1 + 4 + 2) * 2 and jnp.array_equal(views[5], zoomed_view(x, 0.75))
    assert jnp.array_equal(views[-1], zoomed_view(x, 1.25)[:, :, ::-1])
    assert scale_list("0.8, 1.25") == (0.8, 1.25) and scale_list("") == ()
    for bad in ("1", "3", "0.1", "big"):
        with pytest.raises(CnnError, match="--tta-scales takes shares"):
            scale_list(bad)


def test_tta_scales_reach_training_and_evaluate(tmp_path_factory):
    from cnncli.evaluate import evaluate
    from cnncli.runs import load_run

    s = trained_run(tmp_path_factory, "digits-scales", dataset="digits", epochs=1, tta_scales="0.75,1.25")
    run = load_run(s["run_dir"])
    assert run.tta_scales == (0.75, 1.25)
    # evaluate rebuilds the same views from config.json: training's own test accuracy comes back.
    assert evaluate(s["run_dir"], write=False).accuracy == s["test_accuracy"]


def test_init_from_a_10_class_run_starts_a_2_class_head_from_its_class_rows(tmp_path_factory):
    """digits (10 classes) -> a folder of its 3s and 5s: the head's rows are the source's rows 3 and 5,
    so before any training the 2-class model gives the source's softmax over just those two classes."""
    from flax import nnx

    from cnncli.data import load_dataset
    from cnncli.models import create_model
    from cnncli.runs import load_run
    from cnncli.train.transfer import head_rows, init_from as _init_from
    from cnncli.train.step import split

    src = trained_run(tmp_path_factory, "digits", dataset="digits")
    run = load_run(src["run_dir"])
    x = load_dataset("digits").test.x[:16]
    _, geval, params, rest = split(create_model("net2", (8, 8, 1), 2, seed=5))
    params, rest, note = _init_from(src["run_dir"], params, rest, ["3", "5"], binary=False)
    assert "re-initialised" not in note
    model = nnx.merge(geval, params, rest)
    got = np.asarray(jax.nn.softmax(model(x.astype(np.float32) / 255.0)))
    p = run.probabilities(x)[:, [3, 5]]
    np.testing.assert_allclose(got, p / p.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
    # Classes the source never had: the head is re-initialised and the note says so.
    _, _, params2, rest2 = split(create_model("net2", (8, 8, 1), 2, seed=5))
    assert "re-initialised" in _init_from(src["run_dir"], params2, rest2, ["cat", "dog"])[2]
    # A one-unit sigmoid head: sigmoid(z5 - z3) is the two-class softmax.
    w = np.arange(40.0).reshape(10, 4)
    assert np.array_equal(head_rows(w, [3, 5], binary=True), (w[5] - w[3])[None])
    assert head_rows(np.arange(10.0), [3, 5], binary=True).tolist() == [2.0]


def test_init_from_on_the_command_line(tmp_path_factory, tmp_path, run_cnn):
    src = trained_run(tmp_path_factory, "digits", dataset="digits")
    from cnncli.data import load_dataset

    ds = load_dataset("digits")
    for label in (3, 5):
        (tmp_path / "pair" / str(label)).mkdir(parents=True)
        for i in np.flatnonzero(ds.train.y == label)[:30]:
            Image.fromarray(ds.train.x[i, ..., 0]).save(tmp_path / "pair" / str(label) / f"{i}.png")
    code, out, err = run_cnn("train", "--arch", "net2", "--dataset", tmp_path / "pair", "--epochs", "1",
                             "--init-from", src["run_dir"], "--out", tmp_path / "runs", "--json")
    assert code == 0, err
    assert f"initialised from {src['run_dir']}" in err and "re-initialised" not in err
    assert json.loads(out)["test_accuracy"] > 0.8
