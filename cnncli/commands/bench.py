"""`cnn bench`: time the real train and inference steps and compare with peer frameworks."""

from __future__ import annotations

from typing import Annotated, Optional

from .. import bench as B  # standard library only: its peer list is --vs's choices
from ..precision import NAMES
from ..checks import AT_LEAST_1, NON_NEGATIVE, Choice, ChoiceList, Range, split_list
from .options import Arch, BatchSize, DataDir, Dataset, option


def bench(
    arch: Arch = "net1",
    dataset: Dataset = "mnist",
    input_shape: Annotated[Optional[str], option("--input-shape", metavar="H,W,C",
                                                 help="The input's shape instead of the data set's (no pipeline "
                                                      "measure).", unset="the data set's")] = None,
    classes: Annotated[int, option("--classes", help="Number of classes with --input-shape.", rule=Range(2),
                                   metavar="K")] = 10,
    batch_size: BatchSize = 128,
    infer_batch_size: Annotated[Optional[int], option("--infer-batch-size", rule=AT_LEAST_1, metavar="N",
                                                      help="Inference batch size (default: --batch-size).")] = None,
    modes: Annotated[str, option("--modes", help="What to time.", rule=ChoiceList(B.MODES), metavar="MODES")
                     ] = "train,infer",
    repeats: Annotated[int, option("--repeats", rule=AT_LEAST_1, metavar="N",
                                   help="Timed groups; images/s is their median.")] = 5,
    steps: Annotated[int, option("--steps", rule=AT_LEAST_1, help="Steps per timed group.", metavar="N")] = 10,
    warmup: Annotated[int, option("--warmup", rule=NON_NEGATIVE, help="Untimed steps after compilation.",
                                  metavar="N")] = 2,
    vs: Annotated[str, option("--vs", help="Peers to run in subprocesses: torch, keras (pip install -e '.[bench]'); "
                              "onnxruntime, the ONNX export on the inference rows ('.[export]').",
                              rule=ChoiceList(B.PEERS, empty=True), metavar="PEERS", unset="none")] = "",
    pipeline: Annotated[bool, option("--pipeline/--no-pipeline", help="Also time real batches from the data set.",
                                     is_flag=True)] = True,
    data_dir: DataDir = None,
    precision: Annotated[str, option("--precision", rule=Choice(NAMES),
                                     help="cnn's and the peers' alike: bf16 is Keras' mixed_bfloat16 policy and "
                                          "PyTorch's autocast.")] = "fp32",
    tune: Annotated[bool, option("--tune", help="Measure every layer's formulations again on this CPU first.",
                                 is_flag=True)] = False,
    json_out: Annotated[bool, option("--json", help="One JSON object per row on stdout.", is_flag=True)] = False,
):
    """Time the real train and inference steps (images/s, GFLOP/s, share of matmul peak) and compare with peers."""
    from ..console import Out
    from ..models import flops_per_image
    from ..models.summary import dataset_input, parse_shape

    out = Out(json=json_out)
    wanted, peers = split_list(modes), split_list(vs)
    shape, k = (parse_shape(input_shape), classes) if input_shape else dataset_input(dataset, arch)
    sizes = {"train": batch_size, "infer": infer_batch_size or batch_size}

    from .. import tuner
    from ..runtime import setup_jax

    setup_jax()  # the compilation cache (a re-measure with --tune loads its candidates from it)
    peak, cpu = B.matmul_peak_gflops(precision=precision), B.cpu_info()
    flops = flops_per_image(arch, shape, k)
    setup = B._Setup(arch, shape, k, precision=precision)
    if tune:
        tuner.retune()
        tune_s = B.tune_layers(setup, sizes, wanted)
        out.print(f"tuned {len(tuner.measured())} layer ops in {tune_s:.1f} s (kept in {tuner.path()})")
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
        from ..data import load_dataset

        ds = load_dataset(dataset, data_dir=data_dir, limit=batch_size * (steps + 3))
        rows[0].update(B.pipeline_share(setup, ds, batch_size, steps, rows[0]["images_per_s"]))
    startup = B.startup_seconds()
    for r in rows:  # peers ran on the same host, in the same run
        r["cpu"] = cpu
        if r["framework"] == "cnn":
            r["startup_s"] = startup
    if json_out:
        for r in rows:
            out.emit_json(r)
    _print_table(out, arch, shape, repeats, steps, rows)
    _print_notes(out, cpu, peak, precision, flops, [r for r in rows if r["framework"] == "cnn"], dataset,
                 kernels_line(tuner.used()), startup, notes)


def _print_notes(out, cpu, peak, precision, flops, cnn_rows, dataset, kernels, startup, notes) -> None:
    """The lines under the table: the machine, the FLOP count, compile times, the input pipeline."""
    out.print(f"cpu: {cpu['model']}, {cpu['cores']} cores, {cpu['isa']}")
    out.print(f"matmul peak {peak:.0f} GFLOP/s ({precision} 2048^3 jnp.dot, fp32 accumulation); "
              f"forward {flops / 1e6:.1f} MFLOP/image, "
              f"train counted as {B.TRAIN_FLOPS_FACTOR}x")
    for r in cnn_rows:
        out.print(f"cnn {r['mode']}: compile {r['compile_s']:.1f} s, warm-up {r['warmup_s']:.2f} s (excluded)")
    if "pipeline_share" in cnn_rows[0]:
        out.print(f"input pipeline: {cnn_rows[0]['real_images_per_s']:.0f} images/s on real {dataset} batches, "
                  f"{100 * cnn_rows[0]['pipeline_share']:.0f}% of step time")
    elif "pipeline_note" in cnn_rows[0]:
        out.print(cnn_rows[0]["pipeline_note"])
    out.print(kernels)
    out.print(f"`cnn --help` start-up: {startup:.2f} s")
    for note in notes:
        out.print(note)


def _print_table(out, arch, shape, repeats, steps, rows) -> None:
    table = [[r["framework"], r["mode"], r["batch_size"], f"{r['images_per_s']:.0f}",
              f"{r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f}", f"{r['gflops']:.1f}",
              f"{100 * r['peak_share']:.0f}%", f"{r['cnn_speedup']:.2f}x" if "cnn_speedup" in r else ""] for r in rows]
    out.table(f"{arch} {'x'.join(map(str, shape))} {rows[0]['precision']}: images/s (median of {repeats} x {steps} steps)",
              ["framework", "mode", "batch", "images/s", "min-max", "GFLOP/s", "of peak", "cnn speed-up"], table)


def kernels_line(used: dict[str, str]) -> str:
    """Which layer ops ran oneDNN's kernels, e.g. `kernels: oneDNN 3.2.0 for 5 of 9 layer ops
    (conv_fwd 2/2, conv_kgrad 2/2, maxpool_fwd 1/1; the rest: XLA's forms)`."""
    from .. import kernels

    if not kernels.available() and not any(c == "onednn" for c in used.values()):
        return f"kernels: oneDNN not used ({kernels.why_not() or 'not asked'}); XLA's forms only"
    ops: dict[str, list[int]] = {}
    for key, choice in used.items():
        n = ops.setdefault(key.split("(", 1)[0], [0, 0])
        n[0] += choice == "onednn"
        n[1] += 1
    hits = sum(a for a, _ in ops.values())
    detail = ", ".join(f"{op} {a}/{b}" for op, (a, b) in sorted(ops.items()) if a)
    version = kernels.version().split("(", 1)[-1].rstrip(")") if kernels.version() else "oneDNN"
    return (f"kernels: {version} for {hits} of {len(used)} layer ops" + (f" ({detail}; the rest: XLA's forms)"
                                                                           if hits else "; XLA's forms won them all"))

