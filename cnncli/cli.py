"""The `cnn` command line: the app, its commands (one module each under `commands/`) and the entry point.

Heavy libraries (JAX, Flax, TFDS, matplotlib) are imported inside the commands so that
`cnn --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from .commands import bench, compare, data, evaluate, models, predict, recipes, train
from .errors import CnnError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate, compare and run convolutional image classifiers (JAX + Flax).",
)


@app.callback()
def _root() -> None:
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
    ("compare-pooling", compare.compare_pooling),
    ("compare", compare.compare),
    ("bench", bench.bench),
    ("recipes", recipes.recipes),
):
    app.command(_name)(_fn)


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
