"""A whole split scored by a jitted eval step, in padded fixed-size batches on the devices."""

from __future__ import annotations

import jax
import numpy as np

from .feed import put


def eval_batch_size(train_batch_size: int) -> int:
    """The batch a run's validation and test passes use: at least 256 (no gradients to hold)."""
    return max(256, train_batch_size)


def evaluate_arrays(eval_step, params, rest, mesh, x, y, batch_size: int, with_probs: bool = False):
    """(loss, accuracy) over a whole split, in padded fixed-size batches; with `with_probs`, also the
    class probabilities (N, K) as a third item (calibration fits its temperature on them)."""
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    bs = _round_up(min(batch_size, _round_up(n, mesh.size)), mesh.size)
    sums = []
    for i in range(0, n, bs):
        xb, yb = np.asarray(x[i : i + bs]), np.asarray(y[i : i + bs], np.int32)
        m = len(xb)
        w = np.ones(bs, np.float32)
        if m < bs:
            pad = bs - m
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros(pad, np.int32)])
            w[m:] = 0.0
        sums.append(eval_step(params, rest, put(mesh, xb), put(mesh, yb), put(mesh, w)))
    loss, correct = np.sum(jax.device_get([s[:2] for s in sums]), axis=0, dtype=np.float64)  # one host sync
    if with_probs:
        return float(loss) / n, float(correct) / n, np.concatenate([_host(s[2]) for s in sums])[:n]
    return float(loss) / n, float(correct) / n


def _host(a) -> np.ndarray:
    """A batch-sharded array on the host: with several processes, every process's rows."""
    if a.is_fully_addressable:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b
