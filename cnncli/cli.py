"""The `cnn` command line: the app, its commands (one module each under `commands/`) and the entry point.

Heavy libraries (JAX, Flax, TFDS, matplotlib) are imported inside the commands so that
`cnn --help` answers at once.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

try:  # Ctrl-C while the commands load (~0.2 s) ends as it does later: one line, exit 130 (#43)
    import typer

    from . import __version__
    from .commands import bench, compare, data, evaluate, export, models, predict, recipes, train
    from .commands.options import option
    from .guard import Group
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    os._exit(130)

app = typer.Typer(
    cls=Group,  # Ctrl-C, broken pipes and OSErrors end as guard.py says, not as Typer would
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help text is printed as written (Rich markup would eat "[bench]"), in the plain layout of click tools.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train, evaluate, compare and run convolutional image classifiers (JAX + Flax).",
)


def _print_version(value: bool) -> None:
    if value:
        print(f"cnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, option("--version", help="Print the version and exit.", is_flag=True,
                                    callback=_print_version, is_eager=True)] = False,
) -> None:
    """Train, evaluate, compare and run convolutional image classifiers (JAX + Flax)."""


# The order of `cnn --help`: get data, look at a model, train, use the run, compare, time.
for _name, _fn in (
    ("download", data.download),
    ("datasets", data.datasets),
    ("summary", models.summary),
    ("train", train.train),
    ("evaluate", evaluate.evaluate),
    ("predict", predict.predict),
    ("explain", predict.explain),
    ("export", export.export),
    ("serve", export.serve),
    ("compare-pooling", compare.compare_pooling),
    ("compare", compare.compare),
    ("bench", bench.bench),
    ("recipes", recipes.recipes),
):
    # The whole first line of the docstring in the list of commands (click would cut it at ~45 characters).
    app.command(_name, short_help=_fn.__doc__.split("\n", 1)[0])(_fn)


def main() -> None:
    """Entry point: user errors end in one line and a non-zero exit, never a traceback (see guard.py)."""
    from . import distributed
    from .guard import run
    from .runtime import tune_allocator, tune_xla

    if distributed.wanted() and not os.environ.get(distributed.SUPERVISED):
        sys.exit(distributed.supervise())  # one process of a multi-process job: see distributed.py
    tune_allocator()  # before JAX starts its threads (see runtime.py: up to half of a step otherwise)
    tune_xla()  # before JAX first computes (see runtime.py: convolutions on both cores)
    run(_run_app)


def _run_app() -> int:
    """The app's exit code; usage errors (click's) printed as one line."""
    try:
        code = app(standalone_mode=False)  # usage errors come here, to be printed as one line
    except typer.BadParameter as e:
        print(f"error: {_bad_value(e)}", file=sys.stderr)
        return 2
    except typer.TyperException as e:  # click's other usage errors: no such option, missing option, ...
        if type(e).__name__ == "NoArgsIsHelpError":  # plain `cnn`: the help itself, as click prints it
            e.show()
            return 2
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {e.format_message()}{hint}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return code if isinstance(code, int) else 0


def _bad_value(e) -> str:
    """A bad value in one line naming the option: the rules' messages already start with it."""
    name = e.param.opts[0] if e.param is not None and e.param.opts else ""
    msg = e.message
    if msg.startswith("-") or msg.split(" ", 1)[0].isupper() or not name:
        return msg
    return f"{name}: {msg}"


if __name__ == "__main__":
    main()
