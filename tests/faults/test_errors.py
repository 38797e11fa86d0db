"""One error path: every OSError and damaged file is one line and a non-zero exit; the disk keeps what it had."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from flax import serialization

from cnncli.runs import checkpoint

from faultkit import one_line

DIGITS = ("--dataset", "digits", "--arch", "net2", "--batch-size", "64", "--seed", "0")


def train(run_cnn, out, *more, epochs=1, name="r"):
    return run_cnn("train", *DIGITS, "--epochs", epochs, "--out", out, "--name", name, *more)


@pytest.fixture
def trained(run_cnn, tmp_path):
    rc, _, err = train(run_cnn, tmp_path / "runs")
    assert rc == 0, err
    return tmp_path / "runs" / "r"


def test_full_disk_under_out_keeps_the_checkpoint_and_the_run_completes_later(run_cnn, disk):
    rc, _, err = train(run_cnn, disk.path / "runs")
    assert rc == 0, err
    run = disk.path / "runs" / "r"
    before = checkpoint.load(run / "checkpoints" / "last.msgpack")[1]
    disk.fill()
    rc, _, err = run_cnn("train", "--resume", run, "--epochs", "2")
    one_line(err, 1, rc, "No space left on device", str(run))
    meta, after = checkpoint.load(run / "checkpoints" / "last.msgpack")  # the earlier one, whole
    assert meta["loop"]["epoch"] == 1 and all(np.array_equal(before[k], after[k]) for k in before)
    if disk.real:
        for f in disk.path.glob("filler-*"):
            f.unlink()
        assert not list(run.rglob(".*.tmp"))
        rc, _, err = run_cnn("train", "--resume", run, "--epochs", "2")
        assert rc == 0 and (run / "metrics.json").is_file(), err


def test_read_only_out(run_cnn, disk):
    disk.read_only()
    rc, _, err = train(run_cnn, disk.path)
    one_line(err, 1, rc, str(disk.path), "ead-only file system")


def test_full_disk_for_the_cache_is_one_line_and_the_next_run_builds_it(run_cnn, disk, monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_CACHE_DIR", str(disk.path / "cache"))
    disk.fill()
    rc, _, err = train(run_cnn, tmp_path / "runs")
    one_line(err, 1, rc, "No space left on device", str(disk.path / "cache"))


def test_read_only_home_without_a_cache_dir(run_cnn, disk, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(disk.path))
    monkeypatch.delenv("CNN_CACHE_DIR")
    disk.read_only()
    rc, _, err = train(run_cnn, tmp_path / "runs")
    one_line(err, 1, rc, str(disk.path / ".cache"), "ead-only")


def test_out_through_a_file(run_cnn, tmp_path):
    # (--out naming a file and --name a/b/c are usage errors: tests/test_cli.py's REJECTED.)
    (tmp_path / "f").write_text("x")
    rc, _, err = train(run_cnn, tmp_path / "f" / "sub")
    one_line(err, 1, rc, "Not a directory")


def _rewrite(path: Path, edit) -> None:
    blob = serialization.msgpack_restore(path.read_bytes())
    edit(blob)
    path.write_bytes(serialization.msgpack_serialize(blob))


def test_wrong_typed_checkpoint_values(run_cnn, trained):
    last = trained / "checkpoints" / "last.msgpack"
    good = last.read_bytes()
    name = next(k for k in checkpoint.load(last)[1] if k.startswith("params/"))
    _rewrite(last, lambda b: b["state"].__setitem__(name, "not an array"))
    rc, _, err = run_cnn("evaluate", trained, "--checkpoint", "last")
    one_line(err, 2, rc, "not an array", name)
    last.write_bytes(good)
    _rewrite(last, lambda b: b.__setitem__("meta", json.dumps({"loop": {"epoch": "one"}})))
    rc, _, err = run_cnn("train", "--resume", trained, "--epochs", "2")
    one_line(err, 2, rc, "damaged or foreign loop record")


def _meta_edit(edit):
    def apply(b):
        meta = json.loads(b["meta"])
        edit(meta["loop"])
        b["meta"] = json.dumps(meta)
    return apply


# Each field of the loop record read back from disk, with a wrong type or range (#43: each was a traceback).
CRAFTED_LOOPS = {
    "best": (lambda loop: loop.__setitem__("best_value", "high"), "best_value"),
    "partial": (lambda loop: loop.__setitem__("partial", ["a", "b", "c"]), "partial"),
    "history ints": (lambda loop: loop.__setitem__("history", [1, 2]), "history row 1"),
    "history epoch": (lambda loop: loop["history"][0].__setitem__("epoch", "x"), "epoch"),
    "val_accuracy": (lambda loop: loop["history"][0].__setitem__("val_accuracy", "0.9"), "val_accuracy"),
    "negative step": (lambda loop: loop.__setitem__("global_step", -3), "global_step"),
    "boolean epoch": (lambda loop: loop.__setitem__("epoch", True), "epoch"),
    "unknown field": (lambda loop: loop.__setitem__("evil", 1), "evil"),
}


def test_crafted_loop_records_are_one_line_and_the_run_resumes_once_restored(run_cnn, trained):
    last = trained / "checkpoints" / "last.msgpack"
    good = last.read_bytes()
    for case, (edit, needle) in CRAFTED_LOOPS.items():
        _rewrite(last, _meta_edit(edit))
        rc, _, err = run_cnn("train", "--resume", trained, "--epochs", "2")
        one_line(err, 2, rc, "damaged or foreign loop record", str(last), needle)
        last.write_bytes(good)
    rc, _, err = run_cnn("train", "--resume", trained, "--epochs", "2")
    assert rc == 0 and (trained / "metrics.json").is_file(), err


def test_complex_weights_are_refused(run_cnn, trained):
    last = trained / "checkpoints" / "best.msgpack"
    name = next(k for k in checkpoint.load(last)[1] if k.startswith("params/"))
    _rewrite(last, lambda b: b["state"].__setitem__(name, b["state"][name].astype(np.complex64)))
    rc, _, err = run_cnn("evaluate", trained)
    one_line(err, 2, rc, str(last), name, "complex64")


def test_a_full_cache_disk_mid_array_names_the_file(run_cnn, monkeypatch, tmp_path, fresh_cache):
    """numpy's own full-disk error names no file and no errno ('Not enough free space to write N bytes')."""
    def full(*args, **kwargs):
        raise OSError("Not enough free space to write 47040000 bytes after offset 128")

    import cnncli.data.cache as cache

    monkeypatch.setattr(cache.np, "save", full)
    rc, _, err = train(run_cnn, tmp_path / "runs")
    one_line(err, 1, rc, "No space left on device", str(fresh_cache), ".npy", "free some space")
    assert not list(fresh_cache.rglob(".*.tmp"))
    monkeypatch.undo()
    monkeypatch.setenv("CNN_CACHE_DIR", str(fresh_cache))
    rc, _, err = train(run_cnn, tmp_path / "runs", name="r2")
    assert rc == 0, err


def test_a_read_only_run_names_the_users_file_not_a_temporary_one(run_cnn, trained, monkeypatch):
    import errno
    import tempfile

    def refuse(*args, prefix="", dir=None, **kwargs):  # what mkstemp raises in a read-only folder
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / f"{prefix}tmweom3a.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    rc, _, err = run_cnn("evaluate", trained)
    one_line(err, 1, rc, "Permission denied")
    assert ".tmp" not in err and str(trained) in err


def test_cnn_data_dir_naming_no_folder_is_one_line(run_cnn, monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_DATA_DIR", str(tmp_path / "nonexistent"))
    rc, _, err = run_cnn("train", "--dataset", "mnist", "--limit", "300", "--epochs", "1", "--out", tmp_path)
    one_line(err, 2, rc, str(tmp_path / "nonexistent"), "$CNN_DATA_DIR", "does not exist")


def test_nan_weights_are_refused_by_evaluate_and_predict(run_cnn, trained, tmp_path):
    for which in ("best", "last"):
        path = trained / "checkpoints" / f"{which}.msgpack"
        name = next(k for k in checkpoint.load(path)[1] if k.startswith("params/"))

        def poison(b):
            b["state"][name] = np.full_like(b["state"][name], np.nan)

        _rewrite(path, poison)
    rc, _, err = run_cnn("evaluate", trained)
    one_line(err, 2, rc, "NaN")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    rc, out, err = run_cnn("predict", tmp_path / "x.png", "--model", trained)
    one_line(err, 2, rc, "NaN")
    assert "nan" not in out


def test_truncated_and_corrupt_cache_arrays_are_rebuilt_with_a_note(run_cnn, tmp_path, fresh_cache):
    rc, _, err = train(run_cnn, tmp_path / "runs", name="a")
    assert rc == 0, err
    x = next(fresh_cache.glob("arrays/digits-*/train_x.npy"))
    size = x.stat().st_size
    with open(x, "r+b") as f:
        f.truncate(size // 2)
    rc, out, err = train(run_cnn, tmp_path / "runs", name="b")
    assert rc == 0 and "Traceback" not in err, err
    assert "damaged" in out and "rebuilt" in out and x.stat().st_size == size
    with open(x, "r+b") as f:  # same size, other bytes: only the checksum can tell
        f.seek(size - 100)
        f.write(b"\xff" * 50)
    rc, out, err = train(run_cnn, tmp_path / "runs", name="c")
    assert rc == 0 and "does not match its checksum" in out, out + err
    rc, out, err = train(run_cnn, tmp_path / "runs", name="d")  # whole again: no note
    assert rc == 0 and "damaged" not in out, out
    shutil.rmtree(tmp_path / "runs")
