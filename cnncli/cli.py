"""The `cnn` command line: argument parsing and printing only; the work lives in the library.

Heavy libraries (JAX, Flax, TFDS, matplotlib) are imported inside the commands so that
`cnn --help` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import CnnError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate, compare and run convolutional image classifiers (JAX + Flax).",
)

DATA_DIR_HELP = "Folder with local data set files (default: $CNN_DATA_DIR)."
JSON_HELP = "Print one JSON object on stdout (human output goes to stderr)."


@app.callback()
def _root() -> None:
    """Train, evaluate, compare and run convolutional image classifiers (JAX + Flax)."""


# --- data commands ---


@app.command("download")
def download_cmd(
    name: str = typer.Argument(..., help="Data set: mnist, cifar10, cats_vs_dogs or digits."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Where the files go (default: $CNN_DATA_DIR, else ~/.cache/cnn/data)."
    ),
    from_path: Optional[Path] = typer.Option(
        None, "--from", help="Import official files or folders you already have (hard-linked or copied into the data dir)."
    ),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help="Cache images at this side in pixels (default: native; 128 for photos)."
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Get a data set's official files (online, or --from files you have), fill the cache, report what loaded."""
    from .console import Out
    from .data.download import download, summary, write_samples

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


@app.command("datasets")
def datasets_cmd(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the known data sets (classes, shape, source), their local files and what is cached."""
    from .console import Out
    from .data.catalog import catalog

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


# --- model commands ---


def _arch_help() -> str:
    # The registry imports no JAX, so listing its names here keeps `cnn --help` instant.
    from .models.registry import ARCHS

    return "Architecture: " + ", ".join(ARCHS) + "."


@app.command()
def summary(
    arch: str = typer.Option(..., help=_arch_help()),
    dataset: Optional[str] = typer.Option(None, help="Take shape and classes from this data set (nothing is loaded)."),
    input_shape: Optional[str] = typer.Option(None, help="H,W,C of the input, e.g. 28,28,1 (instead of --dataset)."),
    classes: Optional[int] = typer.Option(None, help="Number of classes (with --input-shape, or for a folder)."),
    image_size: Optional[int] = typer.Option(None, help="Square side images are resized to (default: as training)."),
    activation: Optional[str] = typer.Option(None, help="relu|sigmoid|tanh where the architecture allows."),
    dropout: Optional[float] = typer.Option(None, help="Dropout rate where the architecture has dropout."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Layers, output shapes, parameters, memory and FLOPs of an architecture, as Keras prints them."""
    from .console import Out
    from .models.registry import get_arch

    get_arch(arch)  # an unknown name fails before JAX is imported
    from .models.summary import dataset_input, parse_shape, summarize

    if (dataset is None) == (input_shape is None):
        raise CnnError("give either --dataset NAME or --input-shape H,W,C (with --classes K)")
    if dataset is not None:
        shape, k = dataset_input(dataset, arch, image_size, classes)
    else:
        if classes is None:
            raise CnnError("--input-shape needs --classes K")
        shape, k = parse_shape(input_shape), classes
    s = summarize(arch, shape, k, activation=activation, dropout=dropout)
    out = Out(json=json_out)
    if json_out:
        out.emit_json(s)
        return
    out.print(f"Model: {s['arch']} ({s['source']}): {s['description']}")
    out.print(f"Input {'x'.join(map(str, shape))}, {k} classes"
              + (", one sigmoid unit (binary head)" if s["binary_head"] else ""))
    rows = [[r["name"], r["type"], str(tuple(r["output_shape"])), r["params"], r["macs"]] for r in s["layers"]]
    out.table(None, ["layer", "type", "output shape", "params", "MACs"], rows)
    out.print(f"Total params: {s['total_params']:,} ({s['param_memory']})")
    out.print(f"Trainable params: {s['trainable_params']:,}")
    out.print(f"Non-trainable params: {s['non_trainable_params']:,}")
    out.print(f"Per image, forward: {s['macs']:,} MACs, {s['flops']:,} FLOPs")
    out.print(s["counting"])

# --- train commands ---


@app.command()
def train(
    arch: Optional[str] = typer.Option(None, help="Architecture (see `cnn summary --help`); default net1."),
    dataset: Optional[str] = typer.Option(None, help="mnist, cifar10, cats_vs_dogs, digits or an image folder."),
    recipe: Optional[str] = typer.Option(None, help="A named set of options (see `cnn recipes`)."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the training set."),
    time_budget: Optional[float] = typer.Option(None, help="Minutes: train the epochs (at most --epochs) that fit, "
                                                "timed on this machine (0 = off)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step, over all devices."),
    optimizer: Optional[str] = typer.Option(None, help="adam|rmsprop|sgd|adadelta|adagrad|adamw|nadam"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: the optimizer's Keras default)."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum (Nesterov)."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay on kernels."),
    decay_biases: Optional[bool] = typer.Option(None, "--decay-biases/--no-decay-biases",
                                                help="Weight decay on biases and BatchNorm shifts too."),
    schedule: Optional[str] = typer.Option(None, help="constant|cosine|onecycle"),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up length in epochs."),
    lr_start: Optional[float] = typer.Option(None, help="onecycle: first learning rate, as a fraction of the peak."),
    lr_end: Optional[float] = typer.Option(None, help="onecycle/cosine: last learning rate, as a fraction of the peak."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing (0 = off)."),
    bn_bias_lr: Optional[float] = typer.Option(None, help="Learning-rate multiplier for BatchNorm shifts."),
    activation: Optional[str] = typer.Option(None, help="relu|sigmoid|tanh where the architecture allows."),
    dropout: Optional[float] = typer.Option(None, help="Dropout rate where the architecture has dropout."),
    val_split: Optional[float] = typer.Option(None, help="Fraction of train held out for validation (stratified)."),
    image_size: Optional[int] = typer.Option(None, help="Side in pixels photos are resized to (default 128)."),
    limit: Optional[int] = typer.Option(None, help="Train on a stratified subset of N images."),
    balance: Optional[bool] = typer.Option(None, "--balance/--no-balance", help="Undersample to the smallest class."),
    augment: Optional[str] = typer.Option(None, help="none or a list of flip,shift,crop,rotate,zoom,color (on device); crop:N pads N px (default 4)."),
    normalize: Optional[str] = typer.Option(None, help="unit (x/255) or standard (per-channel mean/std)."),
    early_stopping: Optional[int] = typer.Option(None, help="Stop after N epochs without improvement; restores the best."),
    monitor: Optional[str] = typer.Option(None, help="val_accuracy or val_loss: what 'best' means."),
    ema: Optional[float] = typer.Option(None, help="EMA decay of the weights (0 = off)."),
    lookahead: Optional[bool] = typer.Option(None, "--lookahead/--no-lookahead",
                                             help="Every 5 steps move the weights to their EMA (airbench's)."),
    tta_flip: Optional[bool] = typer.Option(None, "--tta-flip/--no-tta-flip", help="Average predictions with the mirror image."),
    tta_shift: Optional[int] = typer.Option(None, help="Also average over copies shifted by +-N pixels (0 = off)."),
    seed: Optional[int] = typer.Option(None, help="Seed for weights, data order, augmentation and dropout."),
    precision: Optional[str] = typer.Option(None, help="fp32 or bf16 (mixed: fp32 master weights)."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    out: Optional[str] = typer.Option(None, help="Parent folder of run directories (default runs/train)."),
    name: Optional[str] = typer.Option(None, help="Run name (default <arch>-<dataset>, auto-numbered)."),
    resume: Optional[Path] = typer.Option(None, help="Continue an interrupted run directory."),
    init_from: Optional[str] = typer.Option(None, help="Start from the weights of another run (transfer learning)."),
    freeze: Optional[str] = typer.Option(None, help="'features': train only the classifier head (with --init-from)."),
    json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Train an architecture on a data set; writes a run directory with checkpoints and curves."""
    # The training options, read before any other local exists (everything but the command's own switches).
    given = {k: v for k, v in locals().items() if k not in ("json", "resume", "recipe")}
    import os

    from .console import Out, fmt
    from .train import TrainConfig, read_config, resolve
    from .train.progress import Progress

    o = Out(json=json)
    if data_dir is None and os.environ.get("CNN_DATA_DIR"):
        given["data_dir"] = os.environ["CNN_DATA_DIR"]
    if resume is not None:
        cfg = TrainConfig.from_dict(read_config(resume))
        if epochs is not None:  # the one option a resumed run may change: train for longer
            cfg.epochs = epochs
    else:
        from .recipes import get_recipe

        rec = get_recipe(recipe) if recipe else None
        if rec is not None:
            o.print(f"recipe {recipe}: {rec['description']}")
        cfg = resolve(given | {"recipe": recipe}, rec["options"] if rec else None)
        from .train.optim import DEFAULT_LR

        shown = {k: v for k, v in cfg.to_dict().items() if k not in ("extra",) and v is not None}
        shown.setdefault("lr", f"{DEFAULT_LR[cfg.optimizer]} ({cfg.optimizer} default)")
        o.print("options: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    from .train import fit

    summary = fit(cfg, Progress(o), resume=resume)
    if json:
        o.emit_json(summary)
    else:
        o.print(f"done in {summary['train_seconds']:.1f}s ({summary['images_per_s']:,.0f} img/s); best epoch "
                f"{summary['best_epoch']}, val accuracy {fmt(summary['best_val_accuracy'])}, "
                f"test accuracy {fmt(summary['test_accuracy'])}")
        o.print(f"run directory: {summary['run_dir']}")

# --- evaluate/predict/explain commands ---

MODEL_HELP = "Run directory of the model (default: the newest under runs/train)."
INVERT_HELP = "Digit models: turn dark-on-light into light-on-dark (auto: when the border is light)."


@app.command()
def evaluate(
    run_dir: Optional[Path] = typer.Argument(None, help="Run directory (default: the newest under --out)."),
    split: Optional[str] = typer.Option(None, help="test, val, train or all. Default: all for a plain "
                                        "<dir>/<class>/ folder given with --dataset, else test."),
    dataset: Optional[str] = typer.Option(None, help="Evaluate on another data set of the same image shape."),
    checkpoint: str = typer.Option("best", help="best or last."),
    predictions: Optional[Path] = typer.Option(None, help="Write a CSV, one row per image: index, split, file, "
                                               "true, predicted, probability, correct."),
    mistakes: Optional[Path] = typer.Option(None, help="With --predictions: where the grid of the most confident "
                                            "mistakes goes (default: beside the CSV, <stem>_mistakes.png)."),
    min_accuracy: Optional[float] = typer.Option(None, help="Exit with code 1 when accuracy is below this (CI gate)."),
    out: str = typer.Option("runs/train", help="Parent folder of run directories, to find the newest."),
    json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Loss, accuracy, classification report and confusion matrix of a run on a split of a data set.

    Writes confusion_matrix.png, errors.png and report.json into the run directory (with a suffix
    such as _val or _last for other splits, data sets or checkpoints).
    """
    from .console import Out
    from .evaluate import evaluate as evaluate_run
    from .evaluate import report_rows
    from .train import latest_run

    o = Out(json=json)
    ev = evaluate_run(run_dir or latest_run(out), split, dataset, checkpoint, predictions=predictions,
                      mistakes=mistakes)
    for note in ev.notes:
        o.print(f"note: {note}")
    if json:
        o.emit_json(ev.to_dict())
    else:
        epoch = "" if ev.epoch is None else f", epoch {ev.epoch}"
        o.print(f"{ev.run_dir}: {ev.dataset}, {ev.scored}, {ev.checkpoint} checkpoint{epoch}")
        o.print(f"loss {ev.loss:.4f}  accuracy {ev.accuracy:.4f}")
        o.table("classification report", ["", "precision", "recall", "f1-score", "support"],
                report_rows(ev.report, ev.classes))
        o.table("confusion matrix (rows: true class, columns: predicted)", ["true \\ pred", *ev.classes],
                [[c, *row] for c, row in zip(ev.classes, ev.confusion_matrix)])
        o.print("wrote " + ", ".join(ev.files.values()))
    if min_accuracy is not None and ev.accuracy < min_accuracy:
        print(f"accuracy {ev.accuracy:.4f} is below --min-accuracy {min_accuracy}", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def predict(
    images: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively, sorted)."),
    model: Optional[Path] = typer.Option(None, "--model", help=MODEL_HELP),
    top_k: int = typer.Option(3, help="How many of the most likely classes to list."),
    invert: str = typer.Option("auto", help=INVERT_HELP + " yes|no|auto"),
    json: bool = typer.Option(False, "--json", help="Print a JSON list on stdout, one entry per file."),
    csv: bool = typer.Option(False, "--csv", help="Print CSV on stdout: file,class,probability,top_k,note,error."),
):
    """Classify images with a trained run; a bad file gets one error line and the others still run."""
    from .console import Out
    from .predict import INVERT_CHOICES, collect_inputs, csv_text, describe, predict_files
    from .train import latest_run, load_run

    if json and csv:
        raise CnnError("choose one of --json and --csv")
    if invert not in INVERT_CHOICES:
        raise CnnError(f"--invert must be one of {', '.join(INVERT_CHOICES)}, not {invert!r}")
    if top_k < 1:
        raise CnnError("--top-k must be at least 1")
    o = Out(json=json or csv)
    files, skipped = collect_inputs(images)
    if skipped:
        print(f"note: skipped {skipped} file(s) without an image extension in the folders given", file=sys.stderr)
    if not files:
        raise CnnError("no image files found in " + ", ".join(map(str, images)))
    run = load_run(model or latest_run())
    if top_k > len(run.classes):  # what is shown must match what is said
        print(f"note: the model has {len(run.classes)} classes; showing all {len(run.classes)}, not top {top_k}",
              file=sys.stderr)
        top_k = len(run.classes)
    results = predict_files(run, files, top_k=top_k, invert=invert)
    failed = [r for r in results if "error" in r]
    if json:
        o.emit_json(results)
    elif csv:
        sys.stdout.write(csv_text(results))
    else:
        for r in failed:
            print(f"{r['file']}: {r['error']}", file=sys.stderr)
        rows = [[r["file"], r["class"], describe(r),
                 ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"]), r["note"]]
                for r in results if "error" not in r]
        if rows:
            o.table(None, ["file", "class", "P(class 1) -> class" if run.binary_head else "probability",
                           f"top {top_k}", "note"], rows, justify_numbers=False)
    if failed:
        print(f"{len(failed)} of {len(results)} file(s) could not be classified", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def explain(
    image: Path = typer.Argument(..., help="The image to explain."),
    model: Optional[Path] = typer.Option(None, "--model", help=MODEL_HELP),
    out: Optional[str] = typer.Option(None, help="Figure to write, in the format its extension names (.png, .jpg, "
                                      ".pdf, .svg, ...), or a folder (default <run_dir>/explain/<stem>_saliency.png)."),
    invert: str = typer.Option("auto", help=INVERT_HELP + " yes|no|auto"),
    json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Saliency map: |d predicted-class logit / d pixel|, beside the image and as an overlay, in one PNG."""
    from .console import Out
    from .explain import explain as explain_image
    from .train import latest_run, load_run

    o = Out(json=json)
    run = load_run(model or latest_run())
    r = explain_image(run, image, out, invert)
    if json:
        o.emit_json(r)
    else:
        note = f" ({r['note']})" if r["note"] else ""
        o.print(f"{r['file']}: {r['class']} {r['probability']:.4f}{note}")
        o.print(f"wrote {r['png']}")

# --- compare commands ---

COMPARE_OUT_HELP = "Parent folder of comparison directories."
REPEATS_HELP = "Train every variant with N seeds (--seed, --seed+1, ...) and report mean ± std."


def _run_comparison(plan, json_out: bool) -> None:
    """Check the plan, train every run through the engine, print tables and conclusions."""
    from .compare import check_plan, print_result, run
    from .console import Out
    from .train.progress import Progress

    check_plan(plan)  # before any training: a bad value costs nothing
    o = Out(json=json_out)
    result = run(plan, o, lambda: Progress(o))
    print_result(o, result)
    if json_out:
        o.emit_json({k: v for k, v in result.items() if k != "curves"})


def _seeds(seed: int, repeats: int) -> list[int]:
    if repeats < 1:
        raise CnnError("--repeats must be at least 1")
    return list(range(seed, seed + repeats))


def _data_dir(data_dir: Optional[str]) -> Optional[str]:
    import os

    return data_dir or os.environ.get("CNN_DATA_DIR") or None


@app.command("compare-pooling")
def compare_pooling(
    datasets: str = typer.Option("mnist,cifar10", help="Comma list of data sets."),
    epochs: int = typer.Option(16, help="Passes over the training set (seed 001: 16)."),
    batch_size: int = typer.Option(128, help="Images per step (seed 001: 128)."),
    optimizer: str = typer.Option("adam", help="Optimizer for both nets (seed 001: adam)."),
    seed: int = typer.Option(0, help="First seed."),
    repeats: int = typer.Option(1, help=REPEATS_HELP),
    limit: Optional[int] = typer.Option(None, help="Train on a stratified subset of N images."),
    val_split: Optional[float] = typer.Option(None, help="Fraction of train held out for validation (default 0.1)."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    out: str = typer.Option("runs/compare", help=COMPARE_OUT_HELP),
    name: str = typer.Option("pooling", help="Comparison directory name (auto-numbered)."),
    json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Seed 001's study: net1 (max pooling) vs net2 (strided conv, no pooling), identical settings.

    Runs go to OUT/NAME/<dataset>-<arch>-s<seed> (normal run directories).
    Writes comparison.png (curves on shared axes), comparison.csv and comparison.json.
    Prints a table and a one-line conclusion per data set.
    """
    from .compare import Plan, pooling_variants

    names = [d.strip() for d in datasets.split(",") if d.strip()]
    if not names:
        raise CnnError("--datasets is empty")
    base = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, limit=limit, val_split=val_split,
                data_dir=_data_dir(data_dir))
    plan = Plan(name, names, pooling_variants(), _seeds(seed, repeats), base, out, " ".join(["cnn", *sys.argv[1:]]))
    _run_comparison(plan, json)


@app.command()
def compare(
    dataset: str = typer.Option(..., help="mnist, cifar10, cats_vs_dogs, digits or an image folder."),
    vary: list[str] = typer.Option(..., help="KEY=V1,V2,... with KEY one of optimizer, lr, activation, dropout, "
                                             "batch-size, epochs, arch, augment (ops joined by +: flip+crop). "
                                             "Several --vary make a grid."),
    arch: Optional[str] = typer.Option(None, help="Architecture (unless --vary arch=...)."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the training set (default: the arch's)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (default: the arch's)."),
    seed: int = typer.Option(0, help="First seed."),
    repeats: int = typer.Option(1, help=REPEATS_HELP),
    limit: Optional[int] = typer.Option(None, help="Train on a stratified subset of N images."),
    val_split: Optional[float] = typer.Option(None, help="Fraction of train held out for validation."),
    data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
    out: str = typer.Option("runs/compare", help=COMPARE_OUT_HELP),
    name: Optional[str] = typer.Option(None, help="Comparison directory name (default <arch>-<dataset>-<keys>)."),
    json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Train variants that differ in one setting (or a grid of them) and compare their curves.

    Seed 001's optimizer study: cnn compare --arch net2 --dataset cifar10 --vary optimizer=adam,adadelta,adagrad
    Runs go to OUT/NAME/<dataset>-<variant>-s<seed> (normal run directories).
    Writes comparison.png (curves on shared axes), comparison.csv and comparison.json.
    Prints a table and a one-line conclusion.
    """
    from .compare import Plan, grid, parse_vary

    varies = parse_vary(vary)
    keys = [k for k, _ in varies]
    for k, given in (("epochs", epochs), ("batch-size", batch_size)):
        if k in keys and given is not None:
            raise CnnError(f"--{k} and --vary {k}=... conflict; give one")
    variants = grid(varies, arch)
    default_name = "-".join([*([arch] if arch else []), Path(dataset).name, *keys])
    base = dict(epochs=epochs, batch_size=batch_size, limit=limit, val_split=val_split, data_dir=_data_dir(data_dir))
    plan = Plan(name or default_name, [dataset], variants, _seeds(seed, repeats), base, out,
                " ".join(["cnn", *sys.argv[1:]]))
    _run_comparison(plan, json)

# --- bench commands ---


@app.command()
def bench(
    arch: str = typer.Option("net1", "--arch", help="Architecture name (the list: `cnn summary --help`)."),
    dataset: str = typer.Option("mnist", "--dataset", help="Data set giving the input shape, classes and real batches."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="H,W,C instead of the data set's (no pipeline measure)."),
    classes: int = typer.Option(10, "--classes", help="Number of classes with --input-shape."),
    batch_size: int = typer.Option(128, "--batch-size", help="Train batch size."),
    infer_batch_size: Optional[int] = typer.Option(None, "--infer-batch-size", help="Inference batch size (default: --batch-size)."),
    modes: str = typer.Option("train,infer", "--modes", help="Comma list of train, infer."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed groups; images/s is their median."),
    steps: int = typer.Option(10, "--steps", min=1, help="Steps per timed group."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed steps after compilation."),
    vs: str = typer.Option("", "--vs", help="Peers to run in subprocesses: torch,keras (pip install -e '.[bench]')."),
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline", help="Also time real batches from the data set."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per row on stdout."),
):
    """Time the real train and inference steps (images/s, GFLOP/s, share of matmul peak) and compare with peers."""
    from . import bench as B
    from .console import Out
    from .models import flops_per_image
    from .models.summary import dataset_input, parse_shape

    out = Out(json=json_out)
    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    if not wanted or set(wanted) - {"train", "infer"}:
        raise CnnError(f"--modes takes train and/or infer; got {modes!r}")
    peers = [p.strip() for p in vs.split(",") if p.strip()]
    unknown = [p for p in peers if p not in B.PEERS]
    if unknown:
        raise CnnError(f"unknown --vs peer {unknown[0]!r}; choose from {', '.join(B.PEERS)}")
    shape, k = (parse_shape(input_shape), classes) if input_shape else dataset_input(dataset, arch)
    sizes = {"train": batch_size, "infer": infer_batch_size or batch_size}

    peak, cpu = B.matmul_peak_gflops(), B.cpu_info()
    flops = flops_per_image(arch, shape, k)
    setup = B._Setup(arch, shape, k)
    rows, notes, skipped = [], [], set()
    for mode in wanted:
        got, failed = B.measure(setup, mode, sizes[mode], [p for p in peers if p not in skipped], repeats=repeats,
                                steps=steps, warmup=warmup, flops=flops, peak=peak)
        rows += got
        notes += failed.values()
        skipped |= failed.keys()
    order = ["cnn", *peers]
    rows.sort(key=lambda r: order.index(r["framework"]))  # by framework; stable, so modes keep their order
    if pipeline and not input_shape and "train" in wanted:
        from .data import load_dataset

        ds = load_dataset(dataset, data_dir=data_dir, limit=batch_size * (steps + 3))
        rows[0].update(B.pipeline_share(setup, ds, batch_size, steps, rows[0]["images_per_s"]))
    startup = B.startup_seconds()
    for r in rows:
        if r["framework"] == "cnn":
            r["startup_s"] = startup

    for r in rows:  # peers ran on the same host, in the same run
        r["cpu"] = cpu
    if json_out:
        for r in rows:
            out.emit_json(r)
    table = [[r["framework"], r["mode"], r["batch_size"], f"{r['images_per_s']:.0f}",
              f"{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f}", f"{r['gflops']:.1f}",
              f"{100 * r['peak_share']:.0f}%", f"{r['cnn_speedup']:.2f}x" if "cnn_speedup" in r else ""] for r in rows]
    out.table(f"{arch} {'x'.join(map(str, shape))}: images/s (median of {repeats} x {steps} steps)",
              ["framework", "mode", "batch", "images/s", "min-max", "GFLOP/s", "of peak", "cnn speed-up"], table)
    cnn_rows = [r for r in rows if r["framework"] == "cnn"]
    out.print(f"cpu: {cpu['model']}, {cpu['cores']} cores, {cpu['isa']}")
    out.print(f"matmul peak {peak:.0f} GFLOP/s (fp32 2048^3 jnp.dot); forward {flops / 1e6:.1f} MFLOP/image, "
              f"train counted as {B.TRAIN_FLOPS_FACTOR}x")
    for r in cnn_rows:
        out.print(f"cnn {r['mode']}: compile {r['compile_s']:.1f} s, warm-up {r['warmup_s']:.2f} s (excluded)")
    if "pipeline_share" in cnn_rows[0]:
        out.print(f"input pipeline: {cnn_rows[0]['real_images_per_s']:.0f} images/s on real {dataset} batches, "
                  f"{100 * cnn_rows[0]['pipeline_share']:.0f}% of step time")
    elif "pipeline_note" in cnn_rows[0]:
        out.print(cnn_rows[0]["pipeline_note"])
    out.print(f"`cnn --help` start-up: {startup:.2f} s")
    for note in notes:
        out.print(note)


# --- recipe commands ---


@app.command()
def recipes(json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """List the named recipes (`cnn train --recipe NAME`) with their measured accuracy and time."""
    from .console import Out
    from .recipes import RECIPES

    o = Out(json=json)
    if json:
        o.emit_json(RECIPES)
        return
    def flag(k, v):  # as typed: switches are --name / --no-name, not "--name True"
        name = k.replace("_", "-")
        return (f"--{name}" if v else f"--no-{name}") if isinstance(v, bool) else f"--{name} {v}"

    rows = [[name, r["description"], r["expected"], " ".join(flag(k, v) for k, v in r["options"].items())]
            for name, r in RECIPES.items()]
    o.table("recipes (every option can still be overridden on the command line)",
            ["recipe", "goal", "measured on a 2-core CPU", "options"], rows, justify_numbers=False)


def main() -> None:
    """Entry point: user errors end in one line and a non-zero exit, never a traceback."""
    from .runtime import tune_allocator, tune_xla

    tune_allocator()  # before JAX starts its threads (see runtime.py: up to half of a step otherwise)
    tune_xla()  # before JAX first computes (see runtime.py: convolutions on both cores)
    try:
        app()
    except CnnError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
