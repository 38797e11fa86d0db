"""Training options: one dataclass, resolved as global defaults <- architecture <- recipe <- command line.

The resolved config is written to the run's `config.json`; it alone rebuilds the model and the
preprocessing for `evaluate`, `predict`, `explain` and `--resume`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import CnnError

OPTIMIZERS = ("adam", "rmsprop", "sgd", "adadelta", "adagrad", "adamw", "nadam")
SCHEDULES = ("constant", "cosine", "onecycle")
AUGMENTS = ("flip", "altflip", "shift", "crop", "rrc", "rotate", "zoom", "color")
RRC_MIN_SCALE = 0.25  # rrc's default smallest crop, as a share of the image's area


@dataclass
class TrainConfig:
    arch: str = "net1"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 10
    time_budget: float = 0.0  # minutes: train for the epochs (at most `epochs`) that fit, timed here; 0: off
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None  # None: the optimizer's Keras default (the seeds used Keras defaults)
    momentum: float = 0.0  # sgd only (nesterov when > 0)
    weight_decay: float = 0.0  # on kernels only; L2 on gradients, decoupled for adamw
    decay_biases: bool = False  # weight decay on every parameter (airbench), not on kernels only
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    lr_start: float = 0.1  # onecycle: the first step's rate, as a fraction of the peak
    lr_end: float = 0.0  # onecycle and cosine: the last step's rate, as a fraction of the peak
    label_smoothing: float = 0.0
    bn_bias_lr: float = 1.0  # learning-rate multiplier for BatchNorm shifts (airbench94: 64)
    activation: str | None = None  # None: the architecture's own
    dropout: float | None = None
    val_split: float = 0.1  # carved from train, stratified; the test split is never used for validation
    image_size: int | None = None  # photos only; None: the data set's default
    limit: int | None = None  # stratified subset of train, for quick runs
    balance: bool = False
    augment: str = "none"  # comma list of AUGMENTS, or "none"
    normalize: str = "unit"  # "unit": x/255 as the seeds did; "standard": per-channel mean/std of train
    early_stopping: int = 0  # patience in epochs; 0: off
    monitor: str = "val_accuracy"  # what "best" means: val_accuracy (max) or val_loss (min)
    seed: int = 0
    precision: str = "fp32"
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0: off
    lookahead: bool = False  # airbench's Lookahead: every 5 steps, the weights move to their EMA
    tta_flip: bool = False  # evaluate on the image and its mirror, averaged
    tta_shift: int = 0  # also on copies shifted by +-N px along each axis (reflect-padded); 0: off
    tta_scales: str = ""  # also on views at these shares of the side, e.g. "0.8,1.25" (step.zoomed_view); "": off
    init_from: str | None = None
    freeze: str | None = None  # "features": train only the classifier head
    recipe: str | None = None
    out: str = "runs/train"
    name: str | None = None
    extra: dict = field(default_factory=dict)  # provenance, filled by the engine (not an option)

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise CnnError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise CnnError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
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
        if self.time_budget < 0:
            raise CnnError("--time-budget is in minutes; 0 turns it off")
        if self.epochs < 1 or self.batch_size < 1:
            raise CnnError("--epochs and --batch-size must be at least 1")
        if not 0.0 <= self.val_split < 1.0:
            raise CnnError("--val-split must be in [0, 1)")
        if self.precision not in ("fp32", "bf16"):
            raise CnnError("--precision must be fp32 or bf16")
        if self.normalize not in ("unit", "standard"):
            raise CnnError("normalize must be 'unit' or 'standard'")
        if self.monitor not in ("val_accuracy", "val_loss"):
            raise CnnError("--monitor must be val_accuracy or val_loss")
        if not (0.0 <= self.lr_start <= 1.0 and 0.0 <= self.lr_end <= 1.0):
            raise CnnError("--lr-start and --lr-end are fractions of the peak learning rate, in [0, 1]")
        if self.bn_bias_lr <= 0:
            raise CnnError("--bn-bias-lr must be a positive multiplier of the learning rate")
        if self.tta_shift < 0:
            raise CnnError("--tta-shift must be 0 (off) or a number of pixels")
        scale_list(self.tta_scales)  # raises on a bad list
        if self.freeze not in (None, "features"):
            raise CnnError("--freeze takes 'features'")
        if self.freeze and not self.init_from:
            raise CnnError("--freeze features needs --init-from RUN_DIR")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


def scale_list(spec: str | None) -> tuple[float, ...]:
    """--tta-scales as numbers: a comma list of shares of the side, each in [0.25, 2] and not 1."""
    out = []
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        try:
            v = float(part)
        except ValueError:
            v = -1.0
        if not (0.25 <= v <= 2.0) or v == 1.0:
            raise CnnError(f"--tta-scales takes shares of the side in [0.25, 2] other than 1 "
                           f"(0.8: the central 80% enlarged; 1.25: the image shrunk in a border), not {part.strip()!r}")
        out.append(v)
    return tuple(out)


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


def resolve(overrides: dict, recipe: dict | None = None) -> TrainConfig:
    """Global defaults <- the architecture's seed defaults <- recipe <- explicit options.

    `overrides` holds only what the user typed (None values are dropped), so a default never
    hides an architecture's or a recipe's choice.
    """
    from ..models import get_arch

    given = {k: v for k, v in overrides.items() if v is not None}
    merged = dict(recipe or {})
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
