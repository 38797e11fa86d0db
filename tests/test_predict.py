"""`cnn predict` and `cnn explain`: every file gets a result or one error line, digit photos are
brought to MNIST's look, broken run directories fail in one line, saliency maps are real gradients.

The digits run is shared with test_evaluate.py (`trained_run` trains it once per session); the
MNIST run (net2, 3,000 images, 2 epochs) needs the real files in $CNN_DATA_DIR.
"""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cnncli import __version__
from cnncli.errors import CnnError
from cnncli.explain import saliency_map
from cnncli.predict import centre_digit, collect_inputs, csv_text, describe, predict_files
from cnncli.runs import Run, load_run
from test_evaluate import cli, trained_run


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return trained_run(tmp_path_factory, "digits", dataset="digits")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    if not (Path(os.environ.get("CNN_DATA_DIR", "/nonexistent")) / "mnist").is_dir():
        pytest.skip("real MNIST not found (set CNN_DATA_DIR)")
    return trained_run(tmp_path_factory, "mnist", dataset="mnist", limit=3000)


def bomb_png(path: Path, side: int = 20000) -> None:
    """A valid 1-bit PNG of side x side pixels (400 M for 20000), written row by row: about 60 kB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)  # filter byte + one bit per pixel
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def digit_image(label_index: int = 0) -> Image.Image:
    from sklearn.datasets import load_digits

    return Image.fromarray(np.round(load_digits().images[label_index] * 255 / 16).astype(np.uint8))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder of good and bad files; returns (folder, {name: expected error substring or None})."""
    d = tmp_path_factory.mktemp("mixed")
    digit = digit_image().resize((40, 40))
    digit.save(d / "a_digit.png")
    digit.convert("CMYK").save(d / "cmyk.jpg")
    rgba = digit.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(d / "rgba.png")
    Image.fromarray((np.asarray(digit, np.uint16) * 257)).save(d / "deep16.png")
    digit.save(d / "anim.gif", save_all=True, append_images=[digit.rotate(90)], duration=100, loop=0)
    Image.new("L", (1, 1), 255).save(d / "one_pixel.png")
    (d / "empty.jpg").write_bytes(b"")
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    noisy.save(d / "whole.jpg", quality=90)
    data = (d / "whole.jpg").read_bytes()
    (d / "whole.jpg").unlink()
    (d / "truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
    (d / "page.jpg").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    bomb_png(d / "bomb.png")
    (d / "sub").mkdir()
    digit.save(d / "sub" / "nested.bmp")
    (d / "notes.txt").write_text("not an image extension: skipped inside folders")
    digit.save(d / ".hidden.png")
    expected = {"a_digit.png": None, "anim.gif": None, "bomb.png": "too many pixels (decompression bomb)",
                "cmyk.jpg": None, "deep16.png": None, "empty.jpg": "empty file", "one_pixel.png": None,
                "page.jpg": "not an image (HTML)", "rgba.png": None, "sub/nested.bmp": None,
                "truncated.jpg": "truncated"}
    return d, expected


def prep_note(r: dict) -> str:
    """What preparing the file did, without the calibration's "unsure" (tested in test_calibrate.py)."""
    return ", ".join(n for n in r["note"].split(", ") if n != "unsure")


def test_collect_inputs_recurses_sorted_and_skips(mixed, tmp_path):
    folder, expected = mixed
    files, skipped = collect_inputs([folder, tmp_path / "given.txt"])
    assert [f.relative_to(folder).as_posix() for f in files[:-1]] == sorted(expected)
    assert files[-1] == tmp_path / "given.txt" and skipped == 1  # a named file is always tried


def test_mixed_folder_gives_a_result_or_one_error_each(digits, mixed, tmp_path):
    folder, expected = mixed
    run = load_run(digits["run_dir"])
    files, _ = collect_inputs([folder, tmp_path / "missing.png"])
    results = predict_files(run, files, top_k=3)
    got = {Path(r["file"]).relative_to(folder).as_posix() if r["file"].startswith(str(folder)) else "missing": r
           for r in results}
    assert got["missing"] == {"file": str(tmp_path / "missing.png"), "error": "no such file"}
    for name, error in expected.items():
        r = got[name]
        if error is None:
            assert r["class"] in run.classes and 0 < r["probability"] <= 1, r
            assert [t["class"] for t in r["top_k"]][0] == r["class"] and len(r["top_k"]) == 3
            assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] >= r["top_k"][2]["probability"]
        else:
            assert set(r) == {"file", "error"} and error in r["error"] and "\n" not in r["error"], r
    # The sklearn digit itself, upscaled to 40x40 and centred back into 8x8, is still a 0.
    assert got["a_digit.png"]["class"] == "0" and prep_note(got["a_digit.png"]) == "centred"
    assert prep_note(got["one_pixel.png"]) == "inverted, no digit found, resized"
    paper = tmp_path / "paper.png"  # the digit as dark ink on white
    Image.fromarray(255 - np.asarray(digit_image().resize((40, 40)))).save(paper)
    notes = [prep_note(predict_files(run, [paper], invert=v)[0]) for v in ("yes", "auto", "no")]
    assert notes == ["inverted, centred", "inverted, centred", "no digit found, resized"]
    rows = csv_text(results).splitlines()
    assert rows[0] == "file,class,probability,top_k,note,error" and len(rows) == len(results) + 1
    assert rows[-1] == f"{tmp_path / 'missing.png'},,,,,no such file"


def test_cli_text_mode_exit_code_and_error_lines(digits, mixed):
    folder, expected = mixed
    r = cli("predict", folder, "--model", digits["run_dir"])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    bad = sorted(n for n, e in expected.items() if e)
    err = r.stderr.strip().splitlines()
    assert err[0] == "note: skipped 1 file(s) without an image extension in the folders given"
    assert sorted(Path(ln.split(": ")[0]).name for ln in err[1:-1]) == bad
    assert err[-1] == f"{len(bad)} of {len(expected)} file(s) could not be classified"
    table = r.stdout.strip().splitlines()
    assert table[0].split()[:3] == ["file", "class", "probability"] and len(table) == 1 + len(expected) - len(bad)


def test_json_output(digits, mixed, run_cnn):
    folder, _ = mixed
    code, out, err = run_cnn("predict", folder / "a_digit.png", folder / "empty.jpg",
                              "--model", digits["run_dir"], "--json", "--top-k", "2")
    assert code == 1
    good, bad = json.loads(out)
    assert good["class"] == "0" and [t["class"] for t in good["top_k"]][0] == "0" and len(good["top_k"]) == 2
    assert bad == {"file": str(folder / "empty.jpg"), "error": "empty file", "cnn_version": __version__}


def test_broken_run_directories_fail_in_one_line(digits, tmp_path, run_cnn):
    wrong_arch = tmp_path / "wrong_arch"
    shutil.copytree(digits["run_dir"], wrong_arch)
    cfg = json.loads((wrong_arch / "config.json").read_text())
    (wrong_arch / "config.json").write_text(json.dumps(cfg | {"arch": "net1"}))  # net2's weights, net1's shapes
    img = tmp_path / "d.png"
    digit_image().save(img)
    code, out, err = run_cnn("predict", img, "--model", wrong_arch)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "another architecture" in err

    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(digits["run_dir"], no_ckpt)
    shutil.rmtree(no_ckpt / "checkpoints")
    code, out, err = run_cnn("predict", img, "--model", no_ckpt)
    assert code == 2 and err == f"error: no checkpoint at {no_ckpt / 'checkpoints' / 'last.msgpack'}\n"


def test_16bit_png_reads_like_its_8bit_twin(digits, tmp_path):
    eight = np.asarray(digit_image().resize((40, 40)))
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    a, b = predict_files(load_run(digits["run_dir"]), [tmp_path / "eight.png", tmp_path / "sixteen.png"])
    assert b["class"] == a["class"] and b["probability"] == pytest.approx(a["probability"], abs=1e-3)


def test_dark_digit_on_transparent_background_is_found(digits, tmp_path):
    im = Image.new("RGBA", (60, 60), (0, 0, 0, 0))  # what drawing apps export: black ink, transparent paper
    ImageDraw.Draw(im).line([(30, 8), (30, 52)], fill=(0, 0, 0, 255), width=6)
    im.save(tmp_path / "t.png")
    assert prep_note(predict_files(load_run(digits["run_dir"]), [tmp_path / "t.png"])[0]) == "inverted, centred"


def test_centre_digit_matches_mnist_geometry():
    img = np.full((300, 200), 255, np.uint8)  # dark ink on white paper, off centre
    img[40:200, 30:110] = 10
    out = centre_digit(255 - img, (28, 28), 20 / 28)
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert rows[-1] - rows[0] + 1 == 20 and cols[-1] - cols[0] + 1 == 10  # longer side 20 px, aspect kept
    ys, xs = np.indices(out.shape)
    w = out.astype(float) / out.sum()
    assert abs((w * ys).sum() - 13.5) <= 0.5 and abs((w * xs).sum() - 13.5) <= 0.5  # centre of mass at the centre
    assert out.max() == 255 and out[0].max() == 0
    # scikit-learn's digits fill their 8x8 frame
    small = centre_digit(255 - img, (8, 8), 1.0)
    assert np.flatnonzero(small.any(1)).tolist() == list(range(8))
    assert centre_digit(np.full((30, 30), 7, np.uint8), (28, 28), 20 / 28) is None  # nothing stands out


def test_inverted_mnist_digit_is_read_like_its_twin(mnist, tmp_path):
    from cnncli.evaluate import dataset_for

    run = load_run(mnist["run_dir"])
    test = dataset_for(run)[0].test
    probs = run.probabilities(test.x)
    sure = np.flatnonzero((probs.argmax(-1) == test.y) & (probs.max(-1) > 0.9))[:40]
    assert len(sure) == 40
    twins, papers = [], []
    for i in sure:  # the test image as a PNG, and its dark-on-white twin at 4x the size
        twins.append(tmp_path / f"{i}_twin.png")
        Image.fromarray(test.x[i, ..., 0]).save(twins[-1])
        papers.append(tmp_path / f"{i}_paper.png")
        Image.fromarray(255 - test.x[i, ..., 0]).resize((112, 112), Image.BILINEAR).save(papers[-1])
    truth = [str(test.y[i]) for i in sure]
    twin = predict_files(run, twins)
    assert [r["class"] for r in twin] == truth and all(prep_note(r) == "" for r in twin)  # left exactly as is
    paper = predict_files(run, papers, invert="auto")
    assert all(prep_note(r) == "inverted, centred" for r in paper)
    # Re-centring an upscaled copy moves a few pixels; a 94% model on 3,000 images keeps 37 of 40 here.
    assert sum(r["class"] == t for r, t in zip(paper, truth)) >= 36
    kept = predict_files(run, papers, invert="no")  # control: black ink on white is not what MNIST looks like
    assert all("inverted" not in r["note"] for r in kept)
    assert sum(r["class"] == t for r, t in zip(kept, truth)) < 20


def test_drawn_digits_are_read_by_the_mnist_model(mnist, tmp_path):
    strokes = {"7": [(40, 40), (160, 40), (90, 180)], "1": [(75, 60), (100, 30), (100, 180)],
               "4": [(130, 190), (130, 30), (50, 140), (160, 140)], "0": None}
    files = []
    for label, line in strokes.items():
        im = Image.new("L", (200, 220), 235)  # off-white paper, dark pen, saved as a JPEG photo would be
        draw = ImageDraw.Draw(im)
        if line:
            draw.line(line, fill=20, width=16)
        else:
            draw.ellipse((50, 30, 150, 190), outline=20, width=16)
        files.append(tmp_path / f"drawn_{label}.jpg")
        im.convert("RGB").save(files[-1], quality=85)
    results = predict_files(load_run(mnist["run_dir"]), files)
    assert [r["class"] for r in results] == list(strokes)
    assert all(prep_note(r) == "inverted, centred" and r["probability"] > 0.5 for r in results)


def test_saliency_is_the_gradient_of_the_predicted_logit(digits):
    from cnncli.runs.infer import normalize

    run = load_run(digits["run_dir"])
    x = np.asarray(digit_image(0))[..., None]
    sal, cls, prob = saliency_map(run, x)
    assert sal.shape == x.shape[:2] and sal.dtype == np.float32 and sal.max() > 0 and (sal >= 0).all()
    p = run.probabilities(x[None])[0]
    assert cls == int(p.argmax()) == 0 and prob == pytest.approx(float(p.max()), rel=1e-5)
    # Finite difference on the most salient pixel, in the [0, 1] pixel units the gradient is taken in.
    i, j = np.unravel_index(sal.argmax(), sal.shape)
    u = x[None].astype(np.float64) / 255
    eps = 1e-3
    bumped = u.copy()
    bumped[0, i, j, 0] += eps
    logit = lambda v: float(run.model(normalize(v.astype(np.float32), run.mean, run.std))[0, cls])  # noqa: E731
    assert abs(logit(bumped) - logit(u)) / eps == pytest.approx(float(sal[i, j]), rel=0.05)


def test_explain_writes_png_and_refuses_to_overwrite_input(digits, tmp_path, run_cnn):
    img = tmp_path / "d.png"
    digit_image(0).save(img)
    code, out, err = run_cnn("explain", img, "--model", digits["run_dir"], "--json")
    assert code in (0, None)
    r = json.loads(out)
    assert r["class"] == "0" and 0 < r["probability"] <= 1
    assert r["png"] == str(Path(digits["run_dir"]) / "explain" / "d_saliency.png")
    with Image.open(r["png"]) as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 200
    code, out, err = run_cnn("explain", img, "--model", digits["run_dir"], "--out", img)
    assert code == 2 and err == f"error: --out {img} is the input image; refusing to overwrite it\n"


def test_binary_head_prints_p1_and_explains_the_predicted_side(tmp_path):
    from cnncli.models import create_model

    # Untrained weights are enough: this checks the plumbing of a one-unit sigmoid head.
    model = create_model("catsdogs", (32, 32, 3), 2, seed=0)
    model.eval()
    run = Run(tmp_path, {"data": {"name": "cats_vs_dogs"}, "arch": "catsdogs"}, model, ["cat", "dog"],
              (32, 32, 3), True, (0.0,) * 3, (1.0,) * 3)
    rng = np.random.default_rng(0)
    files = []
    for k in range(3):
        files.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (50, 40, 3), np.uint8)).save(files[-1])
    for r, f in zip(predict_files(run, files, top_k=5), files):
        assert r["class"] == ("dog" if r["p1"] > 0.5 else "cat") and len(r["top_k"]) == 2
        assert r["probability"] == pytest.approx(max(r["p1"], 1 - r["p1"]), rel=1e-6)
        assert describe(r) == f"{r['p1']:.3f} -> {r['class']}"
        sal, cls, prob = saliency_map(run, np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR)))
        assert sal.shape == (32, 32) and sal.max() > 0
        assert run.classes[cls] == r["class"] and prob == pytest.approx(r["probability"], rel=1e-4)


def test_bad_options_are_one_line(digits, tmp_path, run_cnn):
    img = tmp_path / "d.png"
    digit_image().save(img)
    code, _, err = run_cnn("predict", img, "--model", digits["run_dir"], "--invert", "maybe")
    assert code == 2 and err == "error: --invert must be one of auto, yes, no, not 'maybe'\n"
    code, _, err = run_cnn("predict", img, "--json", "--csv")
    assert code == 2 and err == "error: choose one of --json and --csv\n"
    with pytest.raises(CnnError, match="does not exist"):
        load_run(tmp_path / "nowhere")
