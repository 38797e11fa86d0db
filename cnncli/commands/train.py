"""`cnn train`: train an architecture on a data set into a run directory.

Its options are the fields of `TrainConfig` (train/config.py): each field's default, help and rule
make the option, so `--help` shows the real defaults. Only what the user typed overrides the
architecture's defaults, a `--recipe` or a `--config` (click's ParameterSource tells typed from default).
"""

from __future__ import annotations

import inspect
import json as _json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..host import data_dir_named
from ..errors import CnnError
from ..train.config import options as config_fields
from .options import Json, config_option, option

_COMMAND_ONLY = ("resume", "config", "print_config", "json")
_TYPED = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def train(ctx: typer.Context, **kw):
    """Train an architecture on a data set; writes a run directory with checkpoints and curves.

    The defaults shown are the engine's: an architecture (`cnn summary`) or a --recipe may choose
    others, and an option you type always wins. --config RUN/config.json reruns a run as recorded.
    """
    from ..console import Out, fmt
    from ..runs import read_config
    from ..train import TrainConfig
    from ..train.progress import Progress

    typed = {k: str(v) if isinstance(v, Path) else v for k, v in kw.items()  # config.json records paths as text
             if k not in _COMMAND_ONLY and ctx.get_parameter_source(k).name in _TYPED}
    from .. import distributed

    o = Out(json=kw["json"] or kw["print_config"])  # stdout stays the config's alone
    # docs/distributed.md: in a multi-process job the first process prints; the others only errors.
    follower = distributed.is_follower()
    resume = kw["resume"]
    if resume is not None:
        cfg = TrainConfig.from_dict(read_config(resume))
        ignored = [k for k in typed if k != "epochs"]
        if ignored:
            raise CnnError(f"--resume continues {resume} with its recorded options; only --epochs may change "
                           f"(drop {', '.join('--' + k.replace('_', '-') for k in ignored)})")
        if "epochs" in typed:  # the one option a resumed run may change: train for longer
            cfg.epochs = typed["epochs"]
    else:
        cfg = _resolve(typed, kw["config"], o)
        if kw["print_config"]:
            from .. import __version__

            recorded = {k: v for k, v in cfg.to_dict().items() if k != "extra"}  # extra: the engine's provenance
            print(_json.dumps({**recorded, "cnn_version": __version__}, indent=2))
            return
        from ..train.optim import DEFAULT_LR

        shown = {k: v for k, v in cfg.to_dict().items() if k not in ("extra",) and v is not None}
        shown.setdefault("lr", f"{DEFAULT_LR[cfg.optimizer]} ({cfg.optimizer} default)")
        if not follower:
            o.print("options: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    from ..train import fit

    summary = fit(cfg, Progress(o), resume=resume)
    if follower:
        return
    if kw["json"]:
        o.emit_json(summary)
    else:
        o.print(f"done in {summary['train_seconds']:.1f}s ({summary['images_per_s']:,.0f} img/s); best epoch "
                f"{summary['best_epoch']}, val accuracy {fmt(summary['best_val_accuracy'])}, "
                f"test accuracy {fmt(summary['test_accuracy'])}")
        o.print(f"run directory: {summary['run_dir']}")


def _resolve(typed: dict, config: Path | None, o):
    """The config to train: recorded config or defaults <- recipe <- what was typed."""
    from ..recipes import get_recipe
    from ..train import resolve

    base = _read_config(config) if config is not None else None
    env_dir = data_dir_named()
    if "data_dir" not in typed and base is None and env_dir and os.path.isdir(env_dir):
        typed["data_dir"] = env_dir  # recorded, so a rerun reads the same files
    recipe = typed.get("recipe")
    rec = get_recipe(recipe) if recipe else None
    if rec is not None:
        o.print(f"recipe {recipe}: {rec['description']}")
    return resolve(typed, rec["options"] if rec else None, base=base)


def _read_config(path: Path) -> dict:
    """A recorded config: `RUN/config.json`, a run directory, or a file `--print-config` wrote."""
    from ..runs import read_config

    path = Path(path)
    if path.is_dir():
        return read_config(path)
    try:
        return _json.loads(path.read_text())
    except FileNotFoundError:
        raise CnnError(f"--config {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CnnError(f"--config {path} is not a readable JSON config ({e})") from None


def _parameters() -> list[inspect.Parameter]:
    """One keyword parameter per config field, then the command's own switches."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    for f in config_fields():
        typ = {"int": int, "float": float, "bool": bool}.get(f.type.split(" ")[0], str)
        if f.name in ("data_dir", "init_from"):
            typ = Path
        ann = Annotated[Optional[typ] if f.default is None else typ, config_option(f.name)]
        params.append(inspect.Parameter(f.name, kw, default=f.default, annotation=ann))
    own = {
        "resume": (Optional[Path], option("--resume", help="Continue an interrupted run directory.",
                                          metavar="RUN_DIR", unset="none"), None),
        "config": (Optional[Path], option("--config", metavar="CONFIG_JSON",
                                          help="Rerun a recorded config (RUN/config.json, or a run directory); "
                                               "options you type override it.", unset="none"), None),
        "print_config": (bool, option("--print-config", is_flag=True,
                                      help="Print the config that would train (JSON, for --config) and stop."), False),
        "json": (bool, Json, False),
    }
    for name, (typ, opt, default) in own.items():
        ann = opt if name == "json" else Annotated[typ, opt]
        params.append(inspect.Parameter(name, kw, default=default, annotation=ann))
    return params


train.__signature__ = inspect.Signature(_parameters())
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}
