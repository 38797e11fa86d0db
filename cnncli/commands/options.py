"""Options shared by several commands, defined once as `Annotated` types, and the one way options are built.

A command declares `seed: Seed = 0`; the type carries the option's name, help, metavar and rule
(`cnncli.checks`), the default stays with the command. `option()` turns a rule into the option's
callback, so a bad value is a usage error naming the option (exit 2, one line, before any work),
lists a choice's values in `--help` and completes them in the shell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core

from .. import checks
from ..checks import AT_LEAST_1, FRACTION, Choice, Folder, Rule
from ..train.config import flag_of, options_by_name

JSON_HELP = "Print one JSON object on stdout (human output goes to stderr)."
MODEL_HELP = "Run directory of the model (default: the newest under runs/train)."
INVERT_HELP = "Digit models: turn dark-on-light into light-on-dark (auto: when the border is light)."
_SHORT_CHOICES = 40  # a longer list goes into the help text, not the metavar

# Typer 0.29 prints an argument's type after its metavar ("NAME <str>"), though it does not for options.
_argument_type = typer.core.TyperArgument.display_type_rich
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None if self.metavar else _argument_type(self, ctx)


def _callback(rule: Rule):
    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        if value is None or ctx.resilient_parsing:
            return value
        name = param.opts[0] if param.opts[0].startswith("-") else param.metavar or param.name.upper()
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if (msg := rule.problem(v)) is not None:
                raise typer.BadParameter(f"{name} {msg}", ctx=ctx, param=param)
        return value

    return check


def _completer(values: tuple[str, ...]):
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def option(*decls: str, help: str, rule: Rule | None = None, metavar: str | None = None,
           is_flag: bool = False, unset: str | None = None, **kw):
    """A `typer.Option` with its rule as callback, its values or range in `--help` and a plain metavar.

    `unset` says in `--help` what happens when an option whose default is None is not given.
    """
    if unset is not None:
        kw["show_default"] = unset
    if isinstance(rule, Choice) and not isinstance(rule, checks.ChoiceList):
        listed = "[" + "|".join(rule.values) + "]"
        if metavar is None and len(listed) <= _SHORT_CHOICES and not rule.also:
            metavar = listed
        else:
            help = f"{help} One of: {', '.join(rule.values)}" + (f", or {rule.also}." if rule.also else ".")
            metavar = metavar or "NAME"
        kw["autocompletion"] = _completer(rule.values)
    elif isinstance(rule, checks.ChoiceList):
        help = f"{help} A comma list of: {', '.join(rule.values)}."
    elif isinstance(rule, (checks.Range, checks.Integer)):
        help = f"{help} Must be {rule.describe()}."
    if rule is not None:
        kw["callback"] = _callback(rule)
    if not is_flag:
        kw["metavar"] = metavar or "VALUE"
    return typer.Option(*decls, help=help, **kw)


def argument(help: str, rule: Rule | None = None, *, metavar: str, **kw):
    """A `typer.Argument` with its rule as callback and its choices completed."""
    if rule is not None:
        kw["callback"] = _callback(rule)
    if isinstance(rule, Choice):
        kw["autocompletion"] = _completer(rule.values)
    return typer.Argument(help=help, metavar=metavar, **kw)


def config_option(name: str, **kw):
    """The option of a training-config field, as `cnn train` has it (help and rule from the field)."""
    f = options_by_name()[name]
    is_flag = f.default is False or f.default is True
    decls = (f"{flag_of(name)}/--no-{name.replace('_', '-')}",) if is_flag else (flag_of(name),)
    meta = f.metadata
    help = kw.pop("help", meta["help"])
    if f.default in (None, "") and "(default" not in help:
        kw.setdefault("unset", meta["unset"] or "none")
    return option(*decls, help=help, rule=kw.pop("rule", meta["rule"]),
                  metavar=kw.pop("metavar", meta["metavar"]) or _metavar(f.type, meta["rule"]), is_flag=is_flag, **kw)


def _metavar(annotation: str, rule) -> str | None:
    """N, X or TEXT by the field's type; None lets `option` list a choice's values."""
    if isinstance(rule, Choice):
        return None
    # The dataclass's annotations are strings ("int | None"): config.py has `from __future__ import annotations`.
    return "N" if annotation.startswith("int") else "X" if annotation.startswith("float") else "TEXT"


Json = Annotated[bool, option("--json", help=JSON_HELP, is_flag=True)]
DataDir = Annotated[Optional[Path], config_option("data_dir")]
Dataset = Annotated[str, config_option("dataset")]
Arch = Annotated[str, config_option("arch")]
OptArch = Annotated[Optional[str], config_option("arch")]
BatchSize = Annotated[int, config_option("batch_size")]
OptBatchSize = Annotated[Optional[int], config_option("batch_size", help="Images per step (default: the arch's).")]
Epochs = Annotated[Optional[int], config_option("epochs", help="Passes over the training set (default: the arch's).")]
Limit = Annotated[Optional[int], config_option("limit", unset="all images")]
ValSplit = Annotated[Optional[float], config_option("val_split", help="Fraction of train held out for validation "
                                                                      "(stratified; default 0.1).")]
ImageSize = Annotated[Optional[int], config_option("image_size", help="Square side images are resized to "
                                                                      "(default: as training).")]
Activation = Annotated[Optional[str], config_option("activation")]
Dropout = Annotated[Optional[float], config_option("dropout")]
Model = Annotated[Optional[Path], option("--model", help=MODEL_HELP, rule=Folder(), metavar="RUN_DIR")]
# predict's --model: also an export, a file (or a SavedModel folder); `exported.load_model` says what is wrong.
ModelOrExport = Annotated[Optional[Path], option("--model", metavar="RUN_DIR|EXPORT|imagenet", help=MODEL_HELP[:-1] + (
    ", an export from `cnn export` (.onnx, .stablehlo, .tflite, a SavedModel), or `imagenet`: EfficientNet-Lite0 "
    "with its ImageNet weights and 1,000 classes, no training (where no file or folder has that name)."))]
Invert = Annotated[str, option("--invert", help=INVERT_HELP, rule=checks.choice(checks.INVERT_CHOICES))]
TopK = Annotated[int, option("--top-k", help="How many of the most likely classes to list.", rule=AT_LEAST_1,
                             metavar="K")]
MinAccuracy = Annotated[Optional[float], option("--min-accuracy", rule=FRACTION, metavar="FRACTION",
                                                help="Exit with code 1 when accuracy is below this (CI gate).")]
