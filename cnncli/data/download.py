"""`cnn download`: get a data set's official files into `<data_dir>/<name>/`, then fill the cache.

Three ways, tried in this order:
- `--from PATH`: files or folders the user already has (the formats of `sources.py`) are
  imported into `<data_dir>/<name>/` in the documented layout (hard-linked when on the same
  file system, else copied; each file or folder appears atomically). They are checked first,
  so nothing broken is imported. After that the data set loads without any option, like a
  downloaded one; a second import of the same files does nothing.
- files already under `<data_dir>/<name>/` or a TFDS copy: nothing is fetched.
- online: the official files are fetched with fetch.py's deadlines and our own readers read
  them. A socket probe first checks, within seconds, that the download host can be reached.
Progress is the project's own (console.task_progress): MB downloaded, files imported.
`<data_dir>` is `--data-dir`, else $CNN_DATA_DIR, else ~/.cache/cnn/data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tarfile
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from .. import locks
from ..errors import CnnError
from ..faultpoints import point
from ..fsutil import atomic_path
from . import folders, readers
from .loader import Dataset, load_dataset
from .fetch import fetch_all, mirrored
from .registry import DatasetSpec, default_data_dir, get_spec
from .sources import locate

PROBE_ENV = "CNN_DOWNLOAD_PROBE"  # "host:port" to probe instead of the download host (tests: a closed local port)
PROBE_TIMEOUT = 4.0  # seconds for the connection probe, DNS included


def download(name: str, *, data_dir=None, from_path=None, image_size: int | None = None) -> Dataset:
    """Make `name` available locally (import, find or fetch its files) and fill the cache."""
    spec = get_spec(name)
    if spec.folder is not None:
        raise CnnError(f"{name} is a folder: it is read where it is, there is nothing to download")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    dest = root / spec.name
    if from_path is not None:
        if not spec.urls:
            raise CnnError(f"{spec.name} ships with scikit-learn; there are no files to import")
        with _writing(dest, spec):
            import_files(spec, Path(from_path).expanduser(), dest)
    elif spec.urls and locate(spec, root) is None:
        with _writing(dest, spec):
            if locate(spec, root) is None:  # another `cnn download` may have fetched it while we waited
                fetch_official(spec, dest)
    return load_dataset(spec.name, data_dir=root, image_size=image_size)


@contextlib.contextmanager
def _writing(dest: Path, spec: DatasetSpec):
    """One writer at a time in `dest` (others wait their turn, then find the files in place); what a
    killed writer left (temporary files, half-copied folders) is removed first."""
    dest.mkdir(parents=True, exist_ok=True)
    # The lock file sits beside `dest`, not in it: `dest` holds exactly the data set's files.
    with locks.held(dest.parent, f"cnn download {spec.name}", wait=True, name=f".{dest.name}.lock"):
        for left in [*dest.glob(".*.tmp"), *dest.glob(".*.importing-*")]:
            shutil.rmtree(left) if left.is_dir() else left.unlink(missing_ok=True)
        yield


# --- online -------------------------------------------------------------------------------------


def fetch_official(spec: DatasetSpec, dest: Path) -> None:
    """Download the official files of `spec` into `dest`, within the deadlines of `fetch.py`."""
    check_online(spec)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest / ".downloads", ignore_errors=True)  # TFDS's staging folder, from older versions
    fetch_all(list(spec.urls), dest, spec.name,
              f"Try again later, or use files you already have: `cnn download {spec.name} --from PATH`")


def check_online(spec: DatasetSpec) -> None:
    """Raise a CnnError within seconds when the download host (or proxy) cannot be reached."""
    host, port = probe_target(mirrored(spec.urls[0]))
    error = _probe(host, port)
    if error:
        raise CnnError(
            f"offline: cannot reach {host}:{port} ({error}), so {spec.name} cannot be downloaded. "
            f"Use files you already have: `cnn download {spec.name} --from PATH`, or put them under "
            f"--data-dir DIR / $CNN_DATA_DIR as <data_dir>/{spec.layout}"
        )


def probe_target(url: str) -> tuple[str, int]:
    """(host, port) to probe: $CNN_DOWNLOAD_PROBE, else the HTTPS proxy, else the URL's host."""
    override = os.environ.get(PROBE_ENV)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = override or proxy or url
    parsed = urlparse(target if "://" in target else f"//{target}")
    return parsed.hostname or "", parsed.port or 443


def _probe(host: str, port: int) -> str | None:
    """None if a TCP connection opens within PROBE_TIMEOUT, else why not.

    The connect runs in a thread because name resolution ignores socket timeouts and can
    hang far longer on a machine without network.
    """
    result = {"error": f"no answer within {PROBE_TIMEOUT:g} s"}

    def connect():
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
            result["error"] = None
        except OSError as e:
            result["error"] = e.strerror or type(e).__name__

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT + 1)
    return result["error"]


# --- --from PATH --------------------------------------------------------------------------------


def import_files(spec: DatasetSpec, src: Path, dest: Path) -> list[Path]:
    """Check `src` and import it into `dest` in the documented layout; returns what was placed."""
    from ..console import task_progress

    if not src.exists():
        raise CnnError(f"--from {src}: no such file or folder")
    plan = _plan(spec, src.resolve(), dest)
    placed = []
    with task_progress(f"importing {spec.name}", sum(_file_count(item) for item, _ in plan), "files") as advance:
        for item, target in plan:
            _place(item, target, advance)
            placed.append(target)
    return placed


def _file_count(item: Path) -> int:
    return 1 if item.is_file() else sum(1 for f in item.rglob("*") if f.is_file())


def _plan(spec, src: Path, dest: Path) -> list[tuple[Path, Path]]:
    """[(source file or folder, where it goes)] after checking that `src` holds `spec`'s data."""
    planner = {"mnist": _plan_mnist, "cifar10": _plan_cifar, "cats_vs_dogs": _plan_cats}[spec.name]
    plan = planner(spec, src, dest)
    if not plan:
        raise CnnError(f"--from {src}: no {spec.name} files recognised; expected {spec.layout}")
    return plan


def _plan_mnist(spec, src, dest):
    folder = src if src.is_dir() else src.parent
    files = readers.find_mnist(folder)
    if files is None:
        return []
    readers.read_mnist(files)  # checks magic numbers and sizes before anything is copied
    return [(p, dest / p.name) for pair in files.values() for p in pair]


def _plan_cifar(spec, src, dest):
    if src.is_file():
        kind = _cifar_archive_kind(src)
        reader = readers.read_cifar_bin if kind == "bin" else readers.read_cifar_py
        reader(src)
        return [(src, dest / f"cifar-10-{'binary' if kind == 'bin' else 'python'}.tar.gz")]
    for sub in ("cifar-10-batches-bin", "cifar-10-batches-py"):
        if (src / sub).is_dir():
            src = src / sub
    if (src / "data_batch_1.bin").is_file():
        readers.read_cifar_bin(src)
        return [(src, dest / "cifar-10-batches-bin")]
    if (src / "data_batch_1").is_file():
        readers.read_cifar_py(src)
        return [(src, dest / "cifar-10-batches-py")]
    return _plan_split_folders(spec, src, dest)


def _plan_cats(spec, src, dest):
    if src.is_file():
        folders.list_zip(src, list(spec.classes), r"^(?:.*/)?PetImages/(Cat|Dog)/[^/]+$")
        name = src.name if src.name.startswith("kagglecatsanddogs") else "kagglecatsanddogs.zip"
        return [(src, dest / name)]
    if (src / "PetImages").is_dir():
        src = src / "PetImages"
    if src.name == "PetImages":
        folders.list_folder(src, list(spec.classes))
        return [(src, dest / "PetImages")]
    return _plan_split_folders(spec, src, dest)


def _plan_split_folders(spec, src, dest):
    if not folders.has_split_dirs(src):
        return []
    folders.list_folder(src, list(spec.classes))
    return [(src / s, dest / s) for s in ("train", "val", "test") if (src / s).is_dir()]


def _cifar_archive_kind(path: Path) -> str:
    """'bin' or 'py': which CIFAR-10 archive a .tar.gz is, from its member names."""
    try:
        with tarfile.open(path, "r:*") as tar:
            names = {Path(m.name).name for m in tar.getmembers()}
    except (OSError, tarfile.TarError, EOFError) as e:
        raise CnnError(f"--from {path}: not a readable .tar.gz ({e})") from None
    if "data_batch_1.bin" in names:
        return "bin"
    if "data_batch_1" in names:
        return "py"
    raise CnnError(f"--from {path}: no CIFAR-10 batches in this archive")


def _place(item: Path, target: Path, advance) -> None:
    """Put a file or folder at `target` (link, else copy), atomically; identical ones are kept.
    `advance(n)` is told of each file placed (or found in place)."""
    if target.exists() and (item.resolve() == target.resolve() or _same_tree(item, target)):
        advance(_file_count(item))
        return
    if target.exists():
        raise CnnError(f"{target} already exists and differs from {item}; remove it or use another --data-dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    if item.is_file():
        _link_or_copy_file(item, target)
        advance(1)
        return
    staging = target.parent / f".{target.name}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)

    def placed(src, dst):
        _link_or_copy(src, dst)
        advance(1)

    try:
        shutil.copytree(item, staging, copy_function=placed)
        point("import-staged")
        os.rename(staging, target)  # the whole folder appears at once
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _link_or_copy_file(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        os.unlink(tmp)
        _link_or_copy(src, tmp)


def _link_or_copy(src, dst) -> None:
    """A hard link costs no space or time; across file systems, copy instead."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _same_tree(a: Path, b: Path) -> bool:
    """Same relative file names and sizes (a re-import of the same files)."""

    def listing(p: Path):
        if p.is_file():
            return {"": p.stat().st_size}
        return {str(f.relative_to(p)): f.stat().st_size for f in p.rglob("*") if f.is_file()}

    return a.is_file() == b.is_file() and listing(a) == listing(b)


# --- the report ---------------------------------------------------------------------------------


def summary(ds: Dataset) -> dict:
    """What `cnn download` reports: images per split and class, skipped files by reason."""
    reasons = Counter(s["reason"] for s in ds.info["skipped"])
    return {
        "name": ds.name,
        "classes": ds.classes,
        "shape": list(ds.shape),
        "source": ds.info["source"],
        "cache": ds.info["cache"],
        "fingerprint": ds.fingerprint,
        "test_split": ds.info["test_split"],
        "counts": ds.info["counts"],
        "skipped": dict(reasons.most_common()),
        "skipped_files": ds.info["skipped"],
        "mean": list(ds.mean),
        "std": list(ds.std),
    }


def write_samples(ds: Dataset, path: Path, per_class: int = 8, max_classes: int = 10) -> Path:
    """A PNG grid of training images, one labelled row per class; written atomically.

    The tiles are pasted into one mosaic and drawn with a single imshow: one axes per image
    would cost seconds in matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    h, w, c = ds.shape
    pad = max(1, h // 16)
    rows = min(ds.num_classes, max_classes)
    mosaic = np.full((rows * (h + pad) + pad, per_class * (w + pad) + pad, 3), 255, np.uint8)
    y = np.asarray(ds.train.y)
    for r in range(rows):
        for col, i in enumerate(np.flatnonzero(y == r)[:per_class]):
            top, left = pad + r * (h + pad), pad + col * (w + pad)
            mosaic[top : top + h, left : left + w] = np.asarray(ds.train.x[i])  # (h, w, 1) broadcasts to RGB
    fig, ax = plt.subplots(figsize=(min(12, 1 + per_class * 1.0), min(14, 0.6 + rows * 1.0)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(rows)], ds.classes[:rows])
    ax.set_title(f"{ds.name}: training samples, {h}x{w}x{c}", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
