"""Seeded, stratified index selections (test carve, validation carve, limit, balance) and statistics.

All functions take labels and return sorted index arrays, so a selection keeps the source order
and is the same on every run with the same seed. scikit-learn's `train_test_split(stratify=...)`
does the stratified draws; where stratifying is impossible (a class with one member, fewer
picks than classes) a seeded plain draw is used instead.
"""

from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.2  # share of a data set without an official test split that becomes its test split
TEST_SEED = 0  # fixed, not the run's seed: the carved test split must be the same for every run


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, taken) sorted indices with about `fraction` of each class taken."""
    n = len(y)
    k = int(round(n * fraction))
    if k <= 0:
        return np.arange(n), np.arange(0)
    taken = stratified_subset(y, k, seed)
    kept = np.setdiff1d(np.arange(n), taken, assume_unique=True)
    return kept, taken


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of `n` items with class shares as in `y`."""
    total = len(y)
    if n >= total:
        return np.arange(total)
    if n <= 0:
        return np.arange(0)
    from sklearn.model_selection import train_test_split

    idx = np.arange(total)
    try:
        picked, _ = train_test_split(idx, train_size=n, stratify=y, random_state=seed)
    except ValueError:  # too few picks or a class of one: stratification is undefined
        picked = np.random.default_rng(seed).choice(total, n, replace=False)
    return np.sort(picked)


def balanced_subset(y: np.ndarray, seed: int, num_classes: int) -> np.ndarray:
    """Sorted indices undersampling every present class to the size of the smallest one."""
    counts = np.bincount(y, minlength=num_classes)
    present = np.flatnonzero(counts)
    if len(present) == 0:
        return np.arange(0)
    smallest = counts[present].min()
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), smallest, replace=False) for c in present]
    return np.sort(np.concatenate(picked))


def class_counts(y: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(np.asarray(y), minlength=num_classes).tolist()


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of x/255 over all pixels (population std), exact.

    Counts the 256 byte values per channel chunk by chunk instead of converting to floats:
    fast and light on memory even for a memory-mapped array of gigabytes.
    """
    c = x.shape[-1]
    hist = np.zeros((c, 256), np.int64)
    step = max(1, (1 << 24) // max(1, int(np.prod(x.shape[1:]))))
    for i in range(0, len(x), step):
        chunk = np.asarray(x[i : i + step]).reshape(-1, c)
        for ch in range(c):
            hist[ch] += np.bincount(chunk[:, ch], minlength=256)
    v = np.arange(256) / 255.0
    n = hist.sum(axis=1)
    if not n.all():
        return (0.0,) * c, (0.0,) * c
    mean = hist @ v / n
    var = hist @ (v * v) / n - mean**2
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(np.maximum(var, 0)))
