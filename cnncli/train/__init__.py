"""The training engine: config, optimizers, on-device augmentation, the jitted train step, the loop.
Runs it writes are read through `cnncli.runs`."""

from ..runs import read_config, read_history
from .config import TrainConfig, resolve

__all__ = ["TrainConfig", "resolve", "read_config", "read_history", "fit"]


def fit(*args, **kwargs):
    """See `engine.fit` (imported lazily: it pulls in JAX)."""
    from .engine import fit as _fit

    return _fit(*args, **kwargs)
