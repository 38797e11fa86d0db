"""Data sets: readers of the official formats, bad files, cache, splits, `cnn download`/`datasets`.

Real-data tests read ../shared/data (the `data_dir` fixture) and check the facts in its README;
the format tests write their own small files. No test touches the network.
"""

import gzip
import hashlib
import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.data import DATASETS, decode_image, get_spec, load_dataset
from cnncli.data import pool, readers, sources, splits
from cnncli.errors import CnnError

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def cli(*args, env=None, timeout=120):
    """Run the real `cnn` entry point in a subprocess."""
    e = dict(os.environ, **(env or {}))
    code = "import sys; from cnncli.cli import main; sys.argv = ['cnn', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=e, timeout=timeout)


def jpeg_bytes(color, size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def image_folder(root: Path, counts: dict, size=(8, 8)) -> Path:
    """Grayscale PNGs whose every pixel is a unique id (0..255): rows can be traced to files."""
    next_id = 0
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("L", size, next_id).save(root / cls / f"{i:03d}.png")
            next_id += 1
    return root


def ids(split) -> set:
    return {int(v) for v in np.asarray(split.x)[:, 0, 0, 0]}


# --- MNIST --------------------------------------------------------------------------------------


def test_mnist_matches_the_readme_facts(data_dir):
    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5((data_dir / "mnist" / name).read_bytes()).hexdigest() == md5
    ds = load_dataset("mnist", data_dir=data_dir)
    assert (ds.shape, ds.classes) == ((28, 28, 1), [str(d) for d in range(10)])
    assert ds.train.x.dtype == np.uint8 and ds.train.y.dtype == np.int32
    assert ds.info["counts"]["train"] == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.info["counts"]["test"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert round(ds.mean[0], 4) == 0.1307 and round(ds.std[0], 4) == 0.3081
    again = load_dataset("mnist", data_dir=data_dir)  # from the cache: memory-mapped, same bytes
    assert isinstance(again.train.x, np.memmap) and again.fingerprint == ds.fingerprint
    assert np.array_equal(again.test.x[:50], ds.test.x[:50])


def test_idx_reader_checks_magic_and_size(tmp_path):
    good = struct.pack(">IIII", 2051, 2, 2, 2) + bytes(range(8))
    (tmp_path / "ok.gz").write_bytes(gzip.compress(good))
    assert readers.read_idx(tmp_path / "ok.gz").tolist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(CnnError, match="does not match its header"):
        readers.read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(struct.pack(">I", 1234) + good[4:])
    with pytest.raises(CnnError, match="magic 1234"):
        readers.read_idx(tmp_path / "magic")


# --- CIFAR-10 -----------------------------------------------------------------------------------


def test_cifar_folder_lists_all_60000_without_decoding(data_dir):
    src = sources.locate(get_spec("cifar10"), data_dir)
    assert src.kind == "image-folder" and src.classes == list(DATASETS["cifar10"].classes)
    assert splits.class_counts(src.parts["train"].y, 10) == [5000] * 10
    assert splits.class_counts(src.parts["test"].y, 10) == [1000] * 10


def test_cifar_folder_limit_is_stratified_and_decodes_the_right_files(data_dir):
    ds = load_dataset("cifar10", data_dir=data_dir, limit=200, val_split=0.1, seed=0)
    assert ds.shape == (32, 32, 3)
    assert ds.info["counts"] == {"train": [20] * 10, "val": [4] * 10, "test": [4] * 10}
    assert ds.info["test_split"] == "official"
    # Every row is a decoded file of its class: row 0 of train is one of the class-0 images.
    first = ds.train.x[0]
    airplanes = sorted((data_dir / "cifar10" / "train" / "airplane").iterdir())
    assert any(np.array_equal(first, decode_image(p, (32, 32), "RGB")) for p in airplanes[:600])
    assert 0.3 < ds.mean[2] < 0.6  # README: about (0.491, 0.482, 0.447) over all of train


def cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def write_cifar_bin(folder: Path):
    """Six tiny batches in the official binary record format; returns {split: (x, y)}."""
    folder.mkdir(parents=True)
    out = {"train": [], "test": []}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = cifar_arrays(3, i)
        planes = x.transpose(0, 3, 1, 2).reshape(3, -1)  # R, G, B planes, row-major
        (folder / f"{name}.bin").write_bytes(np.concatenate([y[:, None].astype(np.uint8), planes], 1).tobytes())
        out["test" if name == "test_batch" else "train"].append((x, y))
    return {s: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v])) for s, v in out.items()}


def test_cifar_binary_folder_and_tar_gz(tmp_path, fresh_cache):
    expected = write_cifar_bin(tmp_path / "src" / "cifar-10-batches-bin")
    for layout in ("folder", "tar"):
        data = tmp_path / layout
        if layout == "folder":
            (data / "cifar10").mkdir(parents=True)
            (tmp_path / "src" / "cifar-10-batches-bin").rename(data / "cifar10" / "cifar-10-batches-bin")
        else:
            (data / "cifar10").mkdir(parents=True)
            with tarfile.open(data / "cifar10" / "cifar-10-binary.tar.gz", "w:gz") as tar:
                tar.add(tmp_path / "folder" / "cifar10" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
        ds = load_dataset("cifar10", data_dir=data)
        assert ds.info["kind"] == "cifar-bin"
        for split in ("train", "test"):
            assert np.array_equal(getattr(ds, split).x, expected[split][0])
            assert np.array_equal(getattr(ds, split).y, expected[split][1])


def test_cifar_binary_truncated_batch_is_an_error(tmp_path, fresh_cache):
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    write_cifar_bin(folder)
    (folder / "data_batch_3.bin").write_bytes((folder / "data_batch_3.bin").read_bytes()[:-5])
    with pytest.raises(CnnError, match="data_batch_3.bin has 9214 bytes"):
        load_dataset("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_python_pickles(tmp_path, fresh_cache, protocol):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = cifar_arrays(2, 10 + i)
        batch = {b"batch_label": b"batch", b"labels": y.tolist(), b"filenames": [b"a.png", b"b.png"],
                 b"data": x.transpose(0, 3, 1, 2).reshape(2, -1)}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        xs.append(x)
        ys.append(y)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.info["kind"] == "cifar-py"
    assert np.array_equal(ds.train.x, np.concatenate(xs[:5])) and np.array_equal(ds.test.y, ys[5])


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, fresh_cache):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    exploit = _Exploit()
    exploit.marker = tmp_path / "pwned"
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": exploit, b"labels": [0]}, protocol=2))
    with pytest.raises(CnnError, match=r"refusing to load (posix|os)\.system"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not exploit.marker.exists()
    with pytest.raises(CnnError, match="refusing to load builtins.eval"):
        readers.safe_loads(b"cbuiltins\neval\n(S'1+1'\ntR.", "evil")


# --- cats vs dogs and bad files ------------------------------------------------------------------


def test_cats_vs_dogs_counts_and_limited_load(data_dir):
    src = sources.locate(get_spec("cats_vs_dogs"), data_dir)
    assert src.test_note == "official"
    assert {s: splits.class_counts(p.y, 2) for s, p in src.parts.items()} == {"train": [2000, 2000], "test": [500, 500]}
    ds = load_dataset("cats_vs_dogs", data_dir=data_dir, limit=40)
    assert ds.shape == (128, 128, 3) and ds.classes == ["cat", "dog"]
    assert ds.info["counts"] == {"train": [20, 20], "test": [4, 4]}


def pet_images(root: Path) -> Path:
    """A PetImages-like folder: 10 good photos a class plus an empty, a truncated and an HTML '.jpg'."""
    for cls, color in (("Cat", (200, 50, 50)), ("Dog", (50, 50, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            (root / cls / f"{i}.jpg").write_bytes(jpeg_bytes(color, (30 + i, 20)))
    (root / "Cat" / "10.jpg").write_bytes(b"")
    (root / "Cat" / "11.jpg").write_bytes(jpeg_bytes((1, 2, 3), (64, 64))[:300])
    (root / "Dog" / "10.jpg").write_bytes(b"<!DOCTYPE html><html><body>Not found</body></html>")
    (root / "Dog" / "Thumbs.db").write_bytes(b"\x00" * 10)  # not an image by name: ignored, not counted
    return root


SKIP_REASONS = {("Cat/10.jpg", "empty file"), ("Cat/11.jpg", "truncated"), ("Dog/10.jpg", "named .jpg but is HTML")}


def test_bad_files_are_skipped_and_counted(tmp_path, fresh_cache):
    pet_images(tmp_path / "cats_vs_dogs" / "PetImages")
    live = load_dataset("cats_vs_dogs", data_dir=tmp_path, image_size=16, limit=100)  # no cache: decodes directly
    assert live.info["cache"] is None
    assert {(s["file"], s["reason"]) for s in live.info["skipped"]} == SKIP_REASONS
    ds = load_dataset("cats_vs_dogs", data_dir=tmp_path, image_size=16)
    assert {(s["file"], s["reason"]) for s in ds.info["skipped"]} == SKIP_REASONS
    assert len(ds.train) + len(ds.test) == 20 and ds.shape == (16, 16, 3)
    assert ds.info["test_split"].startswith("carved: 20% stratified")
    # The carve picks 5 of the 23 items (3 cats, 2 dogs) before decoding; the HTML dog is one of them.
    assert ds.info["counts"] == {"train": [7, 9], "test": [3, 1]}
    assert ds.train.x[ds.train.y == 0][:, 8, 8, 0].min() > 150  # cats are red, dogs blue: labels match pixels
    assert ds.train.x[ds.train.y == 1][:, 8, 8, 2].min() > 150


def test_microsoft_zip_reads_like_the_folder(tmp_path, fresh_cache):
    pet = pet_images(tmp_path / "unpacked" / "PetImages")
    (tmp_path / "data" / "cats_vs_dogs").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "data" / "cats_vs_dogs" / "kagglecatsanddogs_5340.zip", "w") as z:
        for f in sorted(pet.rglob("*")):
            z.write(f, f"PetImages/{f.relative_to(pet)}")
        z.writestr("readme[1].txt", "not an image")
    ds = load_dataset("cats_vs_dogs", data_dir=tmp_path / "data", image_size=16)
    assert ds.info["kind"] == "zip"
    assert {(s["file"].removeprefix("PetImages/"), s["reason"]) for s in ds.info["skipped"]} == SKIP_REASONS
    assert len(ds.train) + len(ds.test) == 20


def test_decode_image_exif_resize_mode_and_errors(tmp_path):
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.new("RGB", (40, 20), (10, 200, 30)).save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue(), None, "RGB").shape == (40, 20, 3)  # upright: 20 wide, 40 high
    assert decode_image(buf.getvalue(), (8, 6), "L").shape == (8, 6, 1)
    with pytest.raises(CnnError, match="empty file"):
        decode_image(b"", 32, "RGB")
    with pytest.raises(CnnError, match=r"not an image \(HTML\)"):
        decode_image(b"<html>oops</html>", 32, "RGB")
    (tmp_path / "t.jpg").write_bytes(jpeg_bytes((0, 0, 0), (64, 64))[:200])
    with pytest.raises(CnnError, match="t.jpg: truncated"):
        decode_image(tmp_path / "t.jpg", 32, "RGB")


# --- cache --------------------------------------------------------------------------------------


def test_cache_is_used_then_rebuilt_when_the_source_changes(tmp_path, fresh_cache, monkeypatch):
    folder = image_folder(tmp_path / "shapes", {"circle": 12, "square": 12})
    first = load_dataset(folder)
    assert first.shape == (8, 8, 1) and first.info["mode"] == "L"  # all grayscale, all 8x8: kept native

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache holds this data set")

    monkeypatch.setattr(pool, "_decode_chunk", no_decoding)
    again = load_dataset(folder)
    assert again.fingerprint == first.fingerprint and np.array_equal(again.train.x, first.train.x)

    Image.new("L", (8, 8), 99).save(folder / "square" / "000.png")  # same name, new bytes
    os.utime(folder / "square" / "000.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded although"):
        load_dataset(folder)
    monkeypatch.undo()
    monkeypatch.setenv("CNN_CACHE_DIR", str(fresh_cache))
    rebuilt = load_dataset(folder)
    assert rebuilt.fingerprint != first.fingerprint and 99 in ids(rebuilt.train) | ids(rebuilt.test)
    assert len(list((fresh_cache / "arrays").iterdir())) == 1  # the stale entry was removed


def test_process_pool_decodes_in_order(tmp_path, fresh_cache, monkeypatch):
    folder = image_folder(tmp_path / "f", {"a": 30, "b": 30})
    serial = load_dataset(folder)
    monkeypatch.setattr(pool, "SERIAL_BELOW", 0)
    monkeypatch.setattr(pool, "CHUNK", 7)
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "other-cache"))
    pooled = load_dataset(folder)
    assert np.array_equal(pooled.train.x, serial.train.x) and np.array_equal(pooled.test.y, serial.test.y)


# --- splits -------------------------------------------------------------------------------------


def test_splits_are_stratified_disjoint_and_stable(tmp_path, fresh_cache):
    folder = image_folder(tmp_path / "f", {"a": 100, "b": 50})
    ds = load_dataset(folder, val_split=0.2, seed=3)
    parts = [ids(ds.train), ids(ds.val), ids(ds.test)]
    assert sum(map(len, parts)) == 150 and len(set.union(*parts)) == 150  # disjoint, nothing lost
    assert ds.info["counts"] == {"train": [64, 32], "val": [16, 8], "test": [20, 10]}
    again = load_dataset(folder, val_split=0.2, seed=3)
    assert ids(again.val) == parts[1] and ids(again.test) == parts[2]
    other_seed = load_dataset(folder, val_split=0.2, seed=4)
    assert ids(other_seed.val) != parts[1]
    assert ids(other_seed.test) == parts[2]  # the carved test split never depends on the run's seed


def test_limit_picks_the_same_images_with_or_without_the_cache(tmp_path, fresh_cache):
    folder = image_folder(tmp_path / "f", {"a": 60, "b": 40})
    live = load_dataset(folder, limit=20, val_split=0.25, seed=1)
    assert live.info["cache"] is None  # decoded just the picked files
    assert live.info["counts"] == {"train": [12, 8], "val": [2, 2], "test": [2, 2]}
    load_dataset(folder)  # fills the cache
    cached = load_dataset(folder, limit=20, val_split=0.25, seed=1)
    assert cached.info["cache"] is not None
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(cached, split).x, getattr(live, split).x)


def test_balance_undersamples_each_split(tmp_path, fresh_cache):
    folder = image_folder(tmp_path / "f", {"a": 90, "b": 30})
    ds = load_dataset(folder, balance=True)
    assert ds.info["counts"] == {"train": [24, 24], "test": [6, 6]}


def test_digits_is_offline_scaled_and_split(fresh_cache):
    ds = load_dataset("digits", val_split=0.1)
    assert ds.shape == (8, 8, 1) and ds.train.x.max() == 255
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1294, 144, 359)
    assert ds.info["counts"]["test"] == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


def test_tfds_copy_is_read_when_no_files(tmp_path, fresh_cache, monkeypatch):
    version = tmp_path / "tfds" / "cats_vs_dogs" / "4.0.1"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    records = [{"image": jpeg_bytes((250, 0, 0) if i % 2 == 0 else (0, 0, 250)), "label": i % 2} for i in range(20)]
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(readers, "open_tfds", lambda name, d: {"train": records})
    ds = load_dataset("cats_vs_dogs", data_dir=tmp_path / "nothing", image_size=12)
    assert ds.info["kind"] == "tfds" and ds.info["counts"] == {"train": [8, 8], "test": [2, 2]}
    assert ds.train.x[ds.train.y == 1][:, 6, 6, 2].min() > 200


def test_missing_data_set_says_how_to_get_it(tmp_path, fresh_cache, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(CnnError, match=r"data set 'mnist' not found locally; run `cnn download mnist`"):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(CnnError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


# --- commands -----------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_offline_fails_fast_with_one_line(tmp_path):
    env = {"CNN_DOWNLOAD_PROBE": f"127.0.0.1:{closed_port()}", "TFDS_DATA_DIR": str(tmp_path / "tfds"),
           "CNN_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    start = time.monotonic()
    r = cli("download", "mnist", "--data-dir", str(tmp_path / "data"), env=env)
    assert time.monotonic() - start < 10
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: offline: cannot reach 127.0.0.1")
    assert "--from PATH" in lines[0] and "Traceback" not in r.stderr


def test_online_download_moves_the_official_files_into_place(tmp_path, fresh_cache, data_dir, monkeypatch):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from cnncli.data import download

    # A mirror on 127.0.0.1 serving ../shared/data's files: the real HTTP path, no network.
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(data_dir / "mnist"))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("CNN_DOWNLOAD_MIRROR", "http://127.0.0.1:%d/" % server.server_address[1])
        ds = download.download("mnist", data_dir=tmp_path / "data")
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(MNIST_MD5)  # no temporaries
    assert ds.info["counts"]["train"][:2] == [5923, 6742]


def test_download_from_local_files_imports_and_reports(tmp_path, data_dir):
    env = {"CNN_CACHE_DIR": str(tmp_path / "cache")}
    r = cli("download", "mnist", "--from", str(data_dir / "mnist"), "--data-dir", str(tmp_path / "data"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["counts"]["test"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert report["skipped"] == {} and Path(report["samples"]).stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(MNIST_MD5)
    r = cli("datasets", "--data-dir", str(tmp_path / "data"), "--json", env=env)
    listing = json.loads(r.stdout)
    assert [d["name"] for d in listing["datasets"]] == list(DATASETS)
    assert listing["datasets"][0]["local"] == str(tmp_path / "data" / "mnist")
    assert [(c["name"], c["rows"]) for c in listing["cache"]] == [("mnist", {"train": 60000, "test": 10000})]


def test_download_and_import_progress_is_plain_lines_off_a_terminal(tmp_path, fresh_cache, data_dir, run_cnn,
                                                                   monkeypatch):
    # fresh_cache: the two imports' arrays must not join the shared cache (its newest mnist entry is what a
    # --data-dir without the files falls back on, tests/faults/test_options.py)
    import functools
    import re
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import cnncli.console as console

    monkeypatch.setattr(console, "PLAIN_EVERY", 0.0)  # a line per step, as a long transfer would print
    code, _, err = run_cnn("download", "mnist", "--from", data_dir / "mnist", "--data-dir", tmp_path / "a")
    assert code in (0, None) and [ln.rsplit(",", 1)[0] for ln in err.splitlines() if ln.startswith("importing")] == [
        f"importing mnist: {i}/4 files" for i in range(1, 5)]
    # The download path on a mirror at 127.0.0.1 (no network): MB per file, our lines, no one else's bar.
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(data_dir / "mnist"))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = "127.0.0.1:%d" % server.server_address[1]
        monkeypatch.setenv("CNN_DOWNLOAD_MIRROR", f"http://{host}/")
        monkeypatch.setenv("CNN_DOWNLOAD_PROBE", host)
        code, _, err = run_cnn("download", "mnist", "--data-dir", tmp_path / "b")
    finally:
        server.shutdown()
        server.server_close()
    assert code in (0, None), err
    assert "\r" not in err and "\x1b" not in err and "it/s" not in err  # tqdm draws with \r and "it/s"
    lines = [ln for ln in err.splitlines() if ln.startswith("downloading")]
    assert lines and all(re.fullmatch(r"downloading [\w.-]+\.gz: [\d.,]+/[\d.,]+ MB, \d+ s", ln) for ln in lines)
    assert "downloading train-images-idx3-ubyte.gz: 9.9/9.9 MB" in {ln.rsplit(",", 1)[0] for ln in lines}


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from cnncli.cli import app\n"
        "try: app(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('jax', 'flax', 'tensorflow_datasets', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr
