"""Deterministic index splits. Every split is a function of (size or labels, fraction, seed) only.

Held-out parts come back in seeded random order, so "the first N" (train_limit, test_limit) is a
random sample rather than, say, the first class of an image folder.
"""

import numpy as np
import torch


def permutation(n: int, seed: int) -> np.ndarray:
    """A torch.Generator permutation of range(n): the same on every platform torch supports."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


def split_count(n: int, fraction: float) -> int:
    """How many of n samples a fraction takes: at least one when the fraction is positive and n > 1."""
    if fraction <= 0 or n == 0:
        return 0
    return min(n - 1, max(1, round(n * fraction))) if n > 1 else 0


def random_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) indices: `fraction` of range(n) held out at random; both in seeded random order."""
    order = permutation(n, seed)
    held = split_count(n, fraction)
    return order[held:], order[:held]


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) indices with `fraction` of every class held out (rounded per class), at random."""
    order = permutation(len(y), seed)
    by_class = order[np.argsort(y[order], kind="stable")]  # grouped by class, random within a class
    _, starts, counts = np.unique(y[by_class], return_index=True, return_counts=True)
    rank = np.arange(len(y)) - np.repeat(starts, counts)  # position within its class
    held_mask = rank < np.repeat(np.round(counts * fraction).astype(np.int64), counts)
    position = np.empty(len(y), dtype=np.int64)
    position[order] = np.arange(len(y))  # back to the seeded random order
    kept, held = by_class[~held_mask], by_class[held_mask]
    return kept[np.argsort(position[kept])], held[np.argsort(position[held])]


def tail_split(n: int, fraction: float) -> int:
    """Where a contiguous tail of `fraction` starts (text: no sample straddles two splits)."""
    return n - split_count(n, fraction)
