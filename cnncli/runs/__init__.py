"""Trained runs: the run directory (its files, checkpoints, lock), loading a run, and inference.

Training writes runs through this layer; evaluate, predict, explain, export, serve and bench read them
through it and never import `cnncli.train`. Light at import: JAX loads when a run is loaded.
"""

from .rundir import CHECKPOINTS, checkpoint_in, latest_run, new_run_dir, read_config, read_history
from .run import Run, load_run, pretrained_run

__all__ = ["CHECKPOINTS", "Run", "checkpoint_in", "latest_run", "load_run", "new_run_dir", "pretrained_run",
           "read_config", "read_history"]
