"""Samplers: the statistics each promises (class shares, spacing, coverage, balance), determinism by seed,
and exact mid-epoch resume through the training feed. Labels are real: scikit-learn digits."""

import pytest
import torch

from behemoth.config import load_config
from behemoth.config.data import SamplingConfig
from behemoth.data.sampling import build_sampler, stratified_quota
from behemoth.errors import ConfigError
from behemoth.training.feed import TensorFeed


def sampler(labels, **options):
    return build_sampler(SamplingConfig(**options), labels)


def test_stratified_keeps_every_class_share(digits_bundle):
    labels = digits_bundle.train.y  # 1200 digits, classes of 109..129 rows
    s = sampler(labels, kind="stratified", fraction=0.1)
    rows = s.order(seed=0, epoch=0)
    assert len(rows) == s.epoch_size == 120 and len(set(rows.tolist())) == 120  # no row twice
    expected = torch.bincount(labels, minlength=10).double() * 120 / len(labels)
    got = torch.bincount(labels[rows], minlength=10).double()
    assert (got - expected).abs().max() < 1.0  # each class within one row of its exact share
    # a random subset of the same size drifts much further from the shares (the property is not free)
    random_rows = sampler(labels, kind="random", fraction=0.1).order(0, 0)
    drift = (torch.bincount(labels[random_rows], minlength=10).double() - expected).abs().max()
    assert drift >= 1.0


def test_stratified_quota_sums_exactly_and_stays_within_one():
    counts = torch.tensor([5, 50, 500, 3])
    for size in (1, 7, 100, 557, 558):
        quota = stratified_quota(counts, size)
        assert int(quota.sum()) == size and (quota <= counts).all()
        assert ((quota - counts * size / counts.sum()).abs() < 1).all()


def test_systematic_spacing_is_exactly_k(digits_bundle):
    s = sampler(digits_bundle.train.y, kind="systematic", size=100)
    starts = set()
    for seed in range(6):
        rows = torch.sort(s.order(seed, 0)).values
        assert len(rows) == 100
        assert torch.all(rows.diff() == 1200 // 100)  # k = 12, exactly
        assert 0 <= int(rows[0]) < 12 and int(rows[-1]) < 1200
        starts.add(int(rows[0]))
    assert len(starts) > 1  # the start is random


def test_random_without_replacement_covers_each_row_once(digits_bundle):
    s = sampler(digits_bundle.train.y, kind="random", size=1200)
    rows = s.order(3, 0)
    assert torch.equal(torch.sort(rows).values, torch.arange(1200))
    with_replacement = sampler(digits_bundle.train.y, kind="random", size=1200, replacement=True).order(3, 0)
    assert len(set(with_replacement.tolist())) < 1000  # a bootstrap repeats rows (~63% distinct)
    assert 0 <= int(with_replacement.min()) and int(with_replacement.max()) < 1200


def test_balanced_sampling_equalises_classes(digits_bundle):
    labels = digits_bundle.train.y
    keep = (labels != 0) | (torch.arange(len(labels)) % 10 == 0)  # class 0 cut to a tenth: imbalanced
    labels = labels[keep]
    share_before = float((labels == 0).float().mean())
    rows = sampler(labels, kind="balanced", size=20000).order(0, 0)
    shares = torch.bincount(labels[rows], minlength=10).double() / len(rows)
    assert share_before < 0.02
    assert (shares - 0.1).abs().max() < 0.015  # every class ~1/10 of the draws


def test_deterministic_by_seed_fixed_subset_and_resample(digits_bundle):
    labels = digits_bundle.train.y
    fixed = sampler(labels, kind="stratified", fraction=0.25)
    assert torch.equal(fixed.order(1, 0), fixed.order(1, 0))
    assert not torch.equal(fixed.order(1, 0), fixed.order(2, 0))
    # fixed subset: same rows every epoch, visited in a new order
    assert not torch.equal(fixed.order(1, 0), fixed.order(1, 1))
    assert set(fixed.order(1, 0).tolist()) == set(fixed.order(1, 1).tolist())
    fresh = sampler(labels, kind="stratified", fraction=0.25, resample=True)
    assert set(fresh.order(1, 0).tolist()) != set(fresh.order(1, 1).tolist())
    # sampling.seed pins the subset whatever the training seed is
    pinned = sampler(labels, kind="random", fraction=0.25, seed=7)
    assert torch.equal(pinned.order(1, 0), pinned.order(2, 0))
    ascending = sampler(labels, kind="systematic", size=50, shuffle=False).order(0, 0)
    assert torch.equal(ascending, torch.sort(ascending).values)


@pytest.mark.parametrize("kind", ["random", "systematic", "stratified", "balanced"])
def test_feed_resumes_mid_epoch_exactly(digits_bundle, kind):
    s = sampler(digits_bundle.train.y, kind=kind, fraction=0.5)
    feed = TensorFeed(digits_bundle.train, 32, 2, seed=5, device=torch.device("cpu"), sampler=s)
    full = [(step, [b.y for b in batches]) for step, batches in feed.epoch(1)]
    tail = [(step, [b.y for b in batches]) for step, batches in feed.epoch(1, start_step=4)]
    assert len(full) == 600 // 64 and [s for s, _ in tail] == list(range(4, len(full)))
    for (step_a, ys_a), (step_b, ys_b) in zip(full[4:], tail):
        assert step_a == step_b and all(torch.equal(a, b) for a, b in zip(ys_a, ys_b))


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (
            ["data.sampling.kind=random", "data.sampling.size=10", "data.sampling.fraction=0.1"],
            "size or fraction",
        ),
        (["data.sampling.kind=stratified", "data.sampling.replacement=true"], "replacement applies"),
        (["data.sampling.kind=shuffle", "data.sampling.fraction=0.5"], "kind = 'random'"),
        (["data.sampling.kind=stratified", "data.sampling.fraction=2.0"], "needs sampling with replacement"),
        (["data.sampling.kind=clustered"], "data.sampling.kind"),
    ],
)
def test_bad_sampling_config_fails_at_load_with_its_path(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert "data.sampling" in str(err.value) and fragment in str(err.value)


def test_impossible_requests_name_the_field(digits_bundle):
    with pytest.raises(ConfigError, match="data.sampling.size = 5000"):
        sampler(digits_bundle.train.y, kind="random", size=5000)
    with pytest.raises(ConfigError, match="one class label per sample"):
        sampler(torch.zeros(10, 4, dtype=torch.long), kind="stratified", fraction=0.5)
    oversampled = sampler(digits_bundle.train.y, kind="random", size=5000, replacement=True)
    assert oversampled.epoch_size == 5000
