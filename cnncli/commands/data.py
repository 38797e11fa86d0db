"""`cnn download` and `cnn datasets`: get data sets and list what is known, local and cached."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from ..checks import AT_LEAST_1, choice
from ..data.registry import DATASETS
from .options import Json, argument, option


def download(
    name: Annotated[str, argument(f"Data set: {', '.join(DATASETS)}.", choice(DATASETS), metavar="NAME")],
    data_dir: Annotated[Optional[Path], option(
        "--data-dir", help="Where the files go (default: $CNN_DATA_DIR, else ~/.cache/cnn/data).", metavar="DIR")] = None,
    from_path: Annotated[Optional[Path], option(
        "--from", help="Import official files or folders you already have (hard-linked or copied into the data dir).",
        metavar="PATH", unset="none")] = None,
    image_size: Annotated[Optional[int], option(
        "--image-size", help="Cache images at this side in pixels (default: native; 128 for photos).",
        rule=AT_LEAST_1, metavar="PIXELS")] = None,
    json_out: Json = False,
) -> None:
    """Get a data set's official files (online, or --from files you have), fill the cache, report what loaded."""
    from ..console import Out
    from ..data.download import download, summary, write_samples

    out = Out(json=json_out)
    ds = download(name, data_dir=data_dir, from_path=from_path, image_size=image_size)
    report = summary(ds)
    report["samples"] = str(write_samples(ds, Path(ds.info["cache"]) / "samples.png"))
    _print_data_report(out, report)
    if json_out:
        out.emit_json(report)


def _print_data_report(out, report: dict) -> None:
    """Images per split and class, skipped files by reason, where things are."""
    classes = report["classes"]
    per_class = len(classes) <= 10
    columns = ["split", "images"] + (classes if per_class else ["smallest class", "largest class"])
    rows = []
    for split, counts in report["counts"].items():
        rows.append([split, sum(counts)] + (counts if per_class else [min(counts), max(counts)]))
    out.table(f"{report['name']}: {'x'.join(map(str, report['shape']))}, test split {report['test_split']}", columns, rows)
    if report["skipped"]:
        examples = {}
        for s in report["skipped_files"]:
            examples.setdefault(s["reason"], s["file"])
        out.table("skipped files", ["reason", "files", "example"], [[r, n, examples[r]] for r, n in report["skipped"].items()])
    else:
        out.print("skipped files: none")
    out.print(f"source: {report['source']}")
    out.print(f"cache: {report['cache']}")
    out.print(f"sample grid: {report['samples']}")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def datasets(
    data_dir: Annotated[Optional[Path], option("--data-dir", help="Folder with local data set files "
                                               "(default: $CNN_DATA_DIR, else ~/.cache/cnn/data).", metavar="DIR")] = None,
    json_out: Json = False,
) -> None:
    """List the known data sets (classes, shape, source), their local files and what is cached."""
    from ..console import Out
    from ..data.catalog import catalog

    out = Out(json=json_out)
    cat = catalog(data_dir)
    rows = [
        [d["name"], _short(f"{len(d['classes'])}: {' '.join(d['classes'])}", 32), d["shape"], d["local"] or "-", d["source"]]
        for d in cat["datasets"]
    ]
    out.table(f"data sets (local files under {cat['data_dir']})", ["name", "classes", "shape", "local files", "source"], rows, justify_numbers=False)
    out.print("any image folder works too: <dir>/<class>/*.jpg or <dir>/{train,val,test}/<class>/*.jpg")
    cached = [
        [c["name"], c["size"], c["mode"], " ".join(f"{s}={n:,}" for s, n in c["rows"].items()), c["skipped"], c["megabytes"], c["path"]]
        for c in cat["cache"]
    ]
    if cached:
        out.table(f"cached arrays ({cat['cache_dir']})", ["name", "size", "mode", "images", "skipped", "MB", "path"], cached)
    else:
        out.print(f"cache: empty ({cat['cache_dir']})")
    if json_out:
        out.emit_json(cat)
