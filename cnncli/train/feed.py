"""Getting batches to the devices.

Small data sets (MNIST, CIFAR-10, a few thousand photos: under `RESIDENT_BYTES`) are put on the
devices once, and each step receives only the batch's indices and gathers the images inside the
jitted step: no per-step host work competes with the computation for the CPU. Larger ones are
gathered on the host by a background thread, one batch ahead, from the memory-mapped cache.
Both paths see the same images in the same order, so a run's result does not depend on the path.
"""

from __future__ import annotations

import queue
import threading

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

RESIDENT_BYTES = 2 << 30


def mesh():
    """A 1-D mesh over every device JAX sees: data parallel over the batch axis."""
    return jax.sharding.Mesh(np.array(jax.devices()), ("batch",))


def put(m, arr, idx=None, dtype=None):
    """Global batch `arr` (or `arr[idx]`) -> array sharded over the batch axis. With several
    processes each reads and sends only its own slice of the batch: process i the i-th of N."""
    sharding = NamedSharding(m, P("batch"))
    n_proc = jax.process_count()
    rows = len(arr) if idx is None else len(idx)
    n, i = rows // n_proc, jax.process_index()
    mine = slice(None) if n_proc == 1 else slice(i * n, (i + 1) * n)
    local = np.asarray(arr[mine] if idx is None else arr[idx[mine]], dtype)
    if n_proc == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, (rows, *local.shape[1:]))


class Feeder:
    """Yields the step's data arguments: (x_all, y_all, idx) when resident, else (x, y, idx)."""

    def __init__(self, m, x, y):
        self.mesh, self.x, self.y = m, x, y
        self.resident = x.nbytes + y.nbytes <= RESIDENT_BYTES and jax.process_count() == 1
        if self.resident:
            rep = NamedSharding(m, P())
            self.x_all = jax.device_put(np.asarray(x), rep)
            self.y_all = jax.device_put(np.asarray(y, np.int32), rep)

    def epoch(self, order: np.ndarray, batch_size: int, start: int = 0):
        steps = len(order) // batch_size
        # Sorted within a batch: sequential reads of a memory map; the same on both paths.
        index = (np.sort(order[s * batch_size : (s + 1) * batch_size]) for s in range(start, steps))
        if self.resident:
            for idx in index:
                yield self.x_all, self.y_all, put(self.mesh, idx.astype(np.int32))
            return
        yield from _prefetch(lambda idx: (put(self.mesh, self.x, idx), put(self.mesh, self.y, idx, np.int32),
                                          put(self.mesh, idx.astype(np.int32))), index)


def _prefetch(make, items):
    """Run `make` over `items` in a thread, one result ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def work():
        for it in items:
            out = make(it)
            while not stop.is_set():
                try:
                    q.put(out, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        q.put(None)

    threading.Thread(target=work, daemon=True).start()
    try:
        while (out := q.get()) is not None:
            yield out
    finally:
        stop.set()


def order(seed: int, epoch: int, n: int) -> np.ndarray:
    # One permutation per (seed, epoch): a resumed run replays the same order.
    return np.random.default_rng([seed, epoch]).permutation(n)
