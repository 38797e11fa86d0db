"""The re-framing check: each transform's geometry on small images, labels kept, and `cnn evaluate
--reframe` on a photo folder (the plain kind is exactly the run's own test split)."""

import json

import numpy as np
import pytest
from PIL import Image

from cnncli import reframe as R
from cnncli.data.images import resize_array
from cnncli.errors import CnnError
from cnncli.evaluate import evaluate
from test_evaluate import trained_run


def photo(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def rng(i=0):
    return np.random.default_rng(i)


def test_padded_pastes_the_photo_unchanged_into_a_border_coloured_canvas():
    img = photo(30, 40)
    img[0], img[-1], img[:, 0], img[:, -1] = 7, 7, 7, 7
    out = R.padded(img, rng(), (16, 16))
    assert out.shape == (60, 80, 3)
    hits = [(t, l) for t in range(31) for l in range(41) if np.array_equal(out[t : t + 30, l : l + 40], img)]
    assert len(hits) == 1
    t, l = hits[0]
    rest = out.copy()
    rest[t : t + 30, l : l + 40] = 7
    assert (rest == 7).all()  # everything else is the border's colour
    places = {tuple(np.argwhere(R.padded(img, rng(i), (16, 16)) != 7)[0]) for i in range(8)}
    assert len(places) > 1  # not always the same place


def test_offcentre_is_a_corner_crop_and_rotated_a_quarter_turn():
    img = photo(50, 30)
    corners = [img[:30, :18], img[:30, 12:], img[20:, :18], img[20:, 12:]]
    seen = set()
    for i in range(12):
        out = R.offcentre(img, rng(i), (16, 16))
        match = [k for k, c in enumerate(corners) if np.array_equal(out, c)]
        assert len(match) == 1
        seen.add(match[0])
        turned = R.rotated(img, rng(i), (16, 16))
        assert turned.shape == (30, 50, 3)
        assert np.array_equal(turned, np.rot90(img, 1)) or np.array_equal(turned, np.rot90(img, 3))
    assert len(seen) > 1


def test_portrait_is_the_central_upright_strip():
    wide = photo(60, 80)
    assert np.array_equal(R.portrait(wide, rng(), (16, 16)), wide[:, 17:62])  # 45 = 60 * 3/4 wide, centred
    tall = photo(80, 30)  # narrower than 3:4 already: the central 40 rows
    assert np.array_equal(R.portrait(tall, rng(), (16, 16)), tall[20:60])


def test_lowres_keeps_the_size_and_loses_detail():
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)
    out = R.lowres(checker, rng(), (16, 16))  # reduced to 8x8: the checkerboard averages to grey
    assert out.shape == checker.shape and np.abs(out.astype(int) - 128).max() <= 2
    flat = np.full((20, 24, 1), 90, np.uint8)
    assert np.array_equal(R.lowres(flat, rng(), (16, 16)), flat)


def test_mosaic_tiles_four_images_of_the_same_class():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    tiles = np.stack([np.full((4, 5, 1), 10 * i, np.uint8) for i in range(len(y))])  # image i is all 10*i
    out = R.mosaic(tiles, y, seed=0, size=(8, 10))
    assert out.shape == (9, 8, 10, 1)
    for i, m in enumerate(out):
        cells = [m[r * 4 : r * 4 + 4, c * 5 : c * 5 + 5] for r in (0, 1) for c in (0, 1)]
        owners = [int(cell[0, 0, 0]) // 10 for cell in cells]
        assert all((cell == cell[0, 0, 0]).all() for cell in cells)
        assert owners[0] == i and len(set(owners)) == 4 and {y[j] for j in owners} == {y[i]}


def test_reframe_images_keeps_labels_and_drops_unreadable():
    images = [photo(20 + i, 30, i) for i in range(6)]
    images[2] = None
    y = np.array([0, 1, 0, 1, 0, 1])
    arrays, labels = R.reframe_images(iter(images), y, (8, 8), list(R.KINDS), seed=3)
    assert list(arrays) == list(R.KINDS) and labels.tolist() == [0, 1, 1, 0, 1]
    assert all(a.shape == (5, 8, 8, 3) and a.dtype == np.uint8 for a in arrays.values())
    kept = [im for im in images if im is not None]
    assert all(np.array_equal(arrays["plain"][k], resize_array(im, (8, 8))) for k, im in enumerate(kept))
    again, _ = R.reframe_images(iter(images), y, (8, 8), list(R.KINDS), seed=3)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)  # seeded
    with pytest.raises(CnnError, match="unknown re-framing 'sideways'"):
        R.reframe_images(iter(images), y, (8, 8), ["sideways"])


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """net2 trained 1 epoch on a folder of 2 x 30 photos of varied sizes (bright or dark squares), 16x16."""
    root = tmp_path_factory.mktemp("pets")
    g = np.random.default_rng(0)
    for label, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir()
        for i in range(30):
            h, w = (int(v) for v in g.integers(20, 48, 2))
            img = g.integers(0, 80, (h, w, 3), np.uint8)
            img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] += np.uint8(150 * label)
            Image.fromarray(img).save(root / cls / f"{i}.png")
    return trained_run(tmp_path_factory, "pets", dataset=str(root), image_size=16, epochs=1)


def test_evaluate_reframe_on_source_photos(photo_run, run_cnn):
    code, out, err = run_cnn("evaluate", photo_run["run_dir"], "--reframe", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["images"] == "source photos before the resize" and [x["kind"] for x in r["rows"]] == list(R.KINDS)
    plain = evaluate(photo_run["run_dir"], write=False)
    # The photos decoded at their own size, then resized as training resized them: the same test split.
    assert r["rows"][0]["n"] == plain.n == 12 and r["rows"][0]["accuracy"] == plain.accuracy
    assert all(x["n"] == 12 and x["error_vs_plain"] == pytest.approx(x["error"] - r["rows"][0]["error"])
               for x in r["rows"])
    assert json.loads(open(r["files"]["report"]).read())["rows"] == r["rows"]
    code, out, err = run_cnn("evaluate", photo_run["run_dir"], "--reframe", "--split", "val")
    assert code == 0 and "val split re-framed" in out and out.count("%") >= 2 * len(R.KINDS)
