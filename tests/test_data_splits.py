"""Index splits: disjoint, complete, seeded, and stratified where promised."""

import numpy as np
import pytest

from behemoth.data.splits import random_split, split_count, stratified_split, tail_split


def test_random_split_is_a_seeded_partition():
    kept, held = random_split(1000, 0.1, seed=3)
    assert len(held) == 100 and len(kept) == 900
    assert not set(kept) & set(held) and sorted(np.concatenate([kept, held])) == list(range(1000))
    again_kept, again_held = random_split(1000, 0.1, seed=3)
    assert np.array_equal(kept, again_kept) and np.array_equal(held, again_held)
    assert not np.array_equal(held, random_split(1000, 0.1, seed=4)[1])
    assert not np.array_equal(kept, np.sort(kept))  # seeded random order: "first N" is a random sample


def test_stratified_split_holds_out_each_class_in_proportion():
    y = np.repeat(np.arange(4), [50, 100, 10, 3])
    kept, held = stratified_split(y, 0.2, seed=0)
    assert np.bincount(y[held], minlength=4).tolist() == [10, 20, 2, 1]
    assert not set(kept) & set(held) and len(kept) + len(held) == len(y)
    assert np.array_equal(held, stratified_split(y, 0.2, seed=0)[1])
    assert not np.array_equal(held, stratified_split(y, 0.2, seed=1)[1])
    assert len(set(y[held[:5]].tolist())) > 1  # classes interleaved, not one class after another


@pytest.mark.parametrize(
    "n,fraction,expected", [(10, 0.0, 0), (10, 0.1, 1), (10, 0.01, 1), (1, 0.5, 0), (7, 0.99, 6)]
)
def test_split_count(n, fraction, expected):
    assert split_count(n, fraction) == expected


def test_tail_split():
    assert tail_split(100, 0.1) == 90 and tail_split(100, 0.0) == 100
