"""The training engine: config, optimizers, on-device augmentation, jitted steps, checkpoints, run directories."""

from .config import TrainConfig, resolve
from .rundir import Run, latest_run, load_run, read_config, read_history

__all__ = ["TrainConfig", "resolve", "Run", "latest_run", "load_run", "read_config", "read_history", "fit"]


def fit(*args, **kwargs):
    """See `engine.fit` (imported lazily: it pulls in JAX)."""
    from .engine import fit as _fit

    return _fit(*args, **kwargs)
