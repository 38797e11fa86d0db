"""Evaluating a run on a split of its own data set (or another of the same shape).

The data set is rebuilt from the run's `config.json` with the same arguments training used, so
the splits are the same and nobody re-types them. All numbers come from scikit-learn's metrics
(`classification_report(output_dict=True)`, `confusion_matrix`, `log_loss`) on the model's
predictions, so they equal what scikit-learn prints for the same predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CnnError
from .fsutil import write_json

SPLITS = ("test", "val", "train", "all")
ERRORS_SHOWN = 25  # worst misclassified images drawn in errors.png (a 5x5 grid)
SHOW_BAR_FROM = 2000  # images: fewer are scored in a blink (a bar would only flash)
PREDICTION_FIELDS = ["index", "split", "file", "true", "predicted", "probability", "correct"]


@dataclass
class Evaluation:
    """The result of one evaluation; `to_dict` is what `--json` prints and report.json holds."""

    run_dir: str
    dataset: str
    split: str  # test, val, train or all
    scored: str  # which images were scored, in words: "test split (carved: 20% ...)", "all 500 images"
    sizes: dict  # images scored per split of the data set: {"train": 400, "test": 100}
    checkpoint: str  # the checkpoint actually loaded: best or last
    epoch: int | None  # the epoch that checkpoint was saved at, when known
    classes: list[str]
    n: int
    accuracy: float
    loss: float
    report: dict  # scikit-learn's classification_report(output_dict=True)
    confusion_matrix: list[list[int]]
    notes: list[str] = field(default_factory=list)
    views: str = "the image only"  # the test-time views averaged (`describe_views`)
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def default_split(dataset: str | None) -> str:
    """`all` for a plain <dir>/<class>/ folder given with --dataset (none of it was trained on by this
    run, and its carved test split would be a fifth of it); `test` for everything else."""
    from .data import get_spec
    from .data.folders import has_split_dirs

    if dataset is None:
        return "test"
    spec = get_spec(dataset)
    return "all" if spec.folder is not None and not has_split_dirs(spec.folder) else "test"


def check_outputs(predictions, mistakes) -> None:
    """Refuse output paths of the wrong kind before any work (one line each)."""
    from .plots import figure_format

    if predictions is not None and Path(predictions).suffix.lower() != ".csv":
        raise CnnError(f"--predictions {predictions}: name a .csv file")
    if mistakes is not None:
        if predictions is None:
            raise CnnError("--mistakes goes with --predictions FILE.csv")
        try:
            figure_format(mistakes)
        except CnnError as e:
            raise CnnError(f"--mistakes {e}") from None


def evaluate(run_dir, split: str | None = None, dataset: str | None = None, checkpoint: str = "best",
             write: bool = True, predictions=None, mistakes=None, tta: dict | None = None) -> Evaluation:
    """Evaluate the run in `run_dir` on `split` (default: `default_split`); with `write`, save the figures
    and report.json there. `predictions` names a CSV of one row per image, written with a grid of the
    most confident mistakes beside it (or at `mistakes`). `tta` replaces some of the run's test-time
    views ({"tta_flip": bool, "tta_shift": int, "tta_scales": "0.9,1.1"}): to choose them on the
    validation split without training again."""
    from .console import task_progress
    from .runs import load_run

    split = split or default_split(dataset)
    if split not in SPLITS:
        raise CnnError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    if checkpoint not in ("best", "last"):
        raise CnnError(f"--checkpoint must be best or last, not {checkpoint!r}")
    check_outputs(predictions, mistakes)
    run = load_run(run_dir, which=checkpoint)
    views = set_views(run, tta or {})
    ds, notes = dataset_for(run, dataset)
    rows = scored_rows(ds, split, own=dataset is None)
    y, notes2 = _labels_in_model_order(rows.y, ds.classes, run.classes)
    notes += notes2
    with task_progress(f"scoring {ds.name} {split}", len(y), "images", show_below=SHOW_BAR_FROM) as advance:
        probs = np.concatenate([run.probabilities(x, progress=advance) for x in rows.xs])[rows.order]
    used, epoch = run.checkpoint, run.epoch
    ev = Evaluation(str(run_dir), ds.name, split, rows.described, rows.sizes, used, epoch, list(run.classes),
                    int(len(y)), notes=notes, views=views, **metrics(y, probs, run.classes))
    if write:
        ev.files = write_outputs(ev, rows, y, probs, Path(run_dir),
                                 output_tag(dataset, split, used) + (_views_tag(run) if tta else ""))
    if predictions is not None:
        ev.files["predictions"] = str(write_predictions(predictions, rows, y, probs, run.classes))
        png = Path(mistakes) if mistakes else Path(predictions).with_name(Path(predictions).stem + "_mistakes.png")
        ev.files["mistakes"] = str(_errors_png(rows, y, probs, run.classes, png, _title(ev, run_dir)))
        if write:  # report.json lists every file this evaluation wrote
            write_json(ev.files["report"], ev.to_dict())
    return ev


@dataclass
class Rows:
    """The images one evaluation scores: one or more splits of a data set, kept apart (no copy).

    Row i is image `order[i]` of the splits' images taken one split after the other."""

    xs: list  # uint8 arrays, one per split
    order: np.ndarray
    y: np.ndarray  # per row, as are `split` and `files`
    split: list[str]
    files: list | None  # None unless the data set is read from files
    sizes: dict
    described: str

    def image(self, i: int) -> np.ndarray:
        j = int(self.order[i])
        for x in self.xs:
            if j < len(x):
                return np.asarray(x[j])
            j -= len(x)
        raise IndexError(i)


def scored_rows(ds, split: str, own: bool = True) -> Rows:
    """The rows of `split` ("all": every split there is) and a phrase saying which images they are.

    A plain folder that is not the run's own data set, scored whole, is one pool: its rows are in file
    order and their split is "all" (the carve into train and test means nothing for it)."""
    names = [s for s in ("train", "val", "test") if getattr(ds, s) is not None and len(getattr(ds, s).y)]
    if split != "all":
        if split not in names:
            hint = " (the run was trained with --val-split 0)" if split == "val" and own else ""
            raise CnnError(f"data set {ds.name!r} has no {split} split{hint}")
        names = [split]
    parts = [getattr(ds, s) for s in names]
    files = [ds.files(s) for s in names]
    files = None if any(f is None for f in files) else [f for fs in files for f in fs]
    sizes = {s: int(len(p.y)) for s, p in zip(names, parts)}
    labels = [s for s, p in zip(names, parts) for _ in range(len(p.y))]
    n = len(labels)
    order = np.arange(n)
    carved = str(ds.info.get("test_split", "")).startswith("carved")
    if split == "all" and not own and carved:
        sizes, labels = {"all": n}, ["all"] * n
        if files is not None:
            order = np.argsort(np.array(files, dtype=object), kind="stable")
    if split == "all":
        described = f"all {n:,} images" + (" (" + " + ".join(f"{s} {k:,}" for s, k in sizes.items()) + ")"
                                            if len(sizes) > 1 else "")
    elif split == "test" and carved:
        described = f"test split, {n:,} images ({ds.info['test_split']})"
    elif split == "val" and ds.info.get("val_split"):
        described = f"val split, {n:,} images ({ds.info['val_split']})"
    else:
        described = f"{split} split, {n:,} images"
    y = np.concatenate([p.y for p in parts])[order]
    return Rows([p.x for p in parts], order, y, [labels[i] for i in order],
                None if files is None else [files[i] for i in order], sizes, described)


def write_predictions(path, rows: Rows, y: np.ndarray, probs: np.ndarray, classes: list[str]) -> Path:
    """One CSV row per scored image: index, split, file (when read from files), true, predicted,
    probability of the predicted class, correct (1/0)."""
    from .fsutil import write_text
    from .tables import csv_text

    pred = probs.argmax(-1)
    fields = [f for f in PREDICTION_FIELDS if f != "file" or rows.files is not None]
    out = [{"index": i, "split": rows.split[i], "file": rows.files[i] if rows.files else None,
            "true": classes[y[i]], "predicted": classes[pred[i]], "probability": float(probs[i, pred[i]]),
            "correct": int(pred[i] == y[i])} for i in range(len(y))]
    write_text(path, csv_text(fields, out))
    return Path(path)


def metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """accuracy, loss, report and confusion matrix of predictions `probs` (N, K) against labels `y`."""
    from sklearn.metrics import classification_report, confusion_matrix, log_loss

    labels = list(range(len(classes)))
    pred = probs.argmax(-1)
    report = classification_report(y, pred, labels=labels, target_names=[str(c) for c in classes],
                                   output_dict=True, zero_division=0)
    # float64 and renormalised: float32 softmax rows sum to 1 only within ~1e-7, which log_loss warns about.
    p64 = probs.astype(np.float64)
    p64 /= p64.sum(-1, keepdims=True)
    return {
        "accuracy": float(report["accuracy"]),
        "loss": float(log_loss(y, p64, labels=labels)),
        "report": report,
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def run_data_dir(cfg: dict):
    """The data dir a run trained from, or None when it is gone (moved, another machine): then the
    loader falls back on $CNN_DATA_DIR / the default place."""
    data_dir = cfg.get("data_dir")
    return None if data_dir and not Path(data_dir).expanduser().exists() else data_dir


def dataset_for(run, other: str | None = None):
    """(Dataset, notes): the run's own data set rebuilt from config.json, or `other` checked against the model."""
    from .data import get_spec, load_dataset

    from .checks import seed_value

    cfg = run.config
    data_dir = run_data_dir(cfg)
    notes = []
    if other is None:
        ds = load_dataset(cfg["dataset"], data_dir=data_dir, image_size=cfg.get("image_size"),
                          val_split=cfg.get("val_split", 0.0), limit=cfg.get("limit"),
                          balance=bool(cfg.get("balance")), seed=seed_value(cfg.get("seed", 0)),
                          fit=cfg.get("fit", "squash"))
        recorded = cfg.get("data", {}).get("fingerprint")
        if recorded and recorded != ds.fingerprint:
            notes.append("the data set's files or preprocessing changed since training (fingerprint differs)")
        return ds, notes
    # Photos and folders are resized to the model's input, as training resized them; a registry data set
    # of fixed shape keeps its own, so MNIST never passes for an 8x8 digits set.
    fixed = get_spec(other).shape[0] is not None
    ds = load_dataset(other, data_dir=data_dir, image_size=None if fixed else run.input_shape[0], val_split=0.0,
                      seed=seed_value(cfg.get("seed", 0)), fit=run.fit)
    if tuple(ds.shape) != tuple(run.input_shape):
        raise CnnError(f"data set {other!r} has images of shape {tuple(ds.shape)} but the model takes "
                       f"{tuple(run.input_shape)}")
    if len(ds.classes) != len(run.classes):
        raise CnnError(f"data set {other!r} has {len(ds.classes)} classes but the model has {len(run.classes)}")
    return ds, notes


def _labels_in_model_order(y: np.ndarray, ds_classes: list[str], model_classes: list[str]):
    """Labels renumbered to the model's class order when both name the same classes in another order."""
    if list(ds_classes) == list(model_classes):
        return np.asarray(y), []
    if sorted(ds_classes) == sorted(model_classes):
        index = np.array([model_classes.index(c) for c in ds_classes])
        return index[np.asarray(y)], ["the data set lists the classes in another order: labels matched by name"]
    return np.asarray(y), [f"class names differ ({', '.join(ds_classes)} vs the model's "
                           f"{', '.join(model_classes)}): compared by index"]


def describe_views(flip: bool, shift: int, scales: tuple) -> str:
    """The test-time views in words: "the image only", "flip, shift 1", "flip, scales 0.9,1.1"."""
    parts = (["flip"] if flip else []) + ([f"shift {shift}"] if shift else []) + (
        ["scales " + ",".join(f"{v:g}" for v in scales)] if scales else [])
    return ", ".join(parts) or "the image only"


def set_views(run, tta: dict) -> str:
    """Replace the run's test-time views named in `tta` (others stay the run's); their description."""
    from .checks import check_tta_shift, scale_list

    if "tta_flip" in tta:
        run.tta_flip = bool(tta["tta_flip"])
    if "tta_shift" in tta:
        check_tta_shift(tta["tta_shift"], run.input_shape)
        run.tta_shift = int(tta["tta_shift"])
    if "tta_scales" in tta:
        run.tta_scales = scale_list(tta["tta_scales"])
    return describe_views(run.tta_flip, run.tta_shift, run.tta_scales)


def _views_tag(run) -> str:
    """A file suffix for views other than the run's own: "_views-flip-s1", "_views-none"."""
    parts = (["flip"] if run.tta_flip else []) + ([f"s{run.tta_shift}"] if run.tta_shift else []) + (
        ["x" + "-".join(f"{v:g}" for v in run.tta_scales)] if run.tta_scales else [])
    return "_views-" + ("-".join(parts) or "none")


def output_tag(dataset: str | None, split: str, checkpoint: str) -> str:
    """"" for the default evaluation (own test split, best checkpoint), else a suffix naming what differs,
    so that other evaluations never overwrite the default's files: "_val", "_mnist_test", "_test_last"."""
    if dataset is None and split == "test" and checkpoint == "best":
        return ""
    parts = [Path(dataset).name if dataset else "", split, "last" if checkpoint == "last" else ""]
    return "_" + "_".join(p for p in parts if p)


def write_outputs(ev: Evaluation, rows: Rows, y: np.ndarray, probs: np.ndarray, run_dir: Path,
                  tag: str = "") -> dict:
    """confusion_matrix<tag>.png, errors<tag>.png and report<tag>.json in the run directory; their paths."""
    from . import plots

    title = _title(ev, run_dir)
    files = {
        "confusion_matrix": str(plots.confusion_matrices(np.array(ev.confusion_matrix), ev.classes,
                                                         run_dir / f"confusion_matrix{tag}.png", title)),
        "errors": str(_errors_png(rows, y, probs, ev.classes, run_dir / f"errors{tag}.png", title)),
        "report": str(run_dir / f"report{tag}.json"),
    }
    write_json(files["report"], ev.to_dict() | {"files": files})
    return files


def _title(ev: Evaluation, run_dir) -> str:
    return f"{Path(run_dir).name} on {ev.dataset} {ev.split} ({ev.checkpoint} checkpoint)"


def worst_errors(y: np.ndarray, probs: np.ndarray, k: int = ERRORS_SHOWN) -> np.ndarray:
    """Indices of the misclassified images, most confident mistake first (at most `k`)."""
    pred = probs.argmax(-1)
    wrong = np.flatnonzero(pred != y)
    conf = probs[wrong, pred[wrong]]
    return wrong[np.argsort(-conf, kind="stable")][:k]


def _errors_png(rows: Rows, y, probs, classes, path: Path, title: str) -> Path:
    """The most confident mistakes in a grid, each labelled with its row (and file), truth and guess."""
    from . import plots

    idx = worst_errors(y, probs)
    pred = probs.argmax(-1)
    labels = [f"#{i}" + (f" {_short_name(rows.files[i])}" if rows.files else "")
              + f"\ntrue {classes[y[i]]}\npred {classes[pred[i]]} {probs[i, pred[i]]:.2f}" for i in idx]
    return plots.image_grid([rows.image(int(i)) for i in idx], labels, path,
                            f"worst {len(idx)} of {int((pred != y).sum())} errors: {title}")


def _short_name(file: str, width: int = 22) -> str:
    name = Path(file.rsplit(":", 1)[-1]).name
    return name if len(name) <= width else "..." + name[-(width - 3):]


def report_rows(report: dict, classes: list[str]) -> list[list]:
    """scikit-learn's text layout as table rows: one per class, then accuracy, macro avg, weighted avg."""
    def row(name, r):
        return [name, r["precision"], r["recall"], r["f1-score"], int(r["support"])]

    rows = [row(str(c), report[str(c)]) for c in classes]
    rows.append(["accuracy", "", "", report["accuracy"], int(report["macro avg"]["support"])])
    rows += [row(k, report[k]) for k in ("macro avg", "weighted avg")]
    return rows
