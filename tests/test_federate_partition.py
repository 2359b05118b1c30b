"""Partitions of the training rows among clients (IID, McMahan's shards, Dirichlet), their histograms,
`behemoth federate --show-partition`, and [federate] config errors. No Flower run here."""

import subprocess

import pytest
import torch

from behemoth.config import load_config
from behemoth.errors import ConfigError
from behemoth.federated.partition import dirichlet, iid, label_histogram, label_skew, shards
from tests.conftest import REPO, behemoth_cmd, subprocess_env


def assert_disjoint_cover(parts: list[torch.Tensor], rows: int, complete: bool = True) -> None:
    joined = torch.cat(parts)
    assert len(torch.unique(joined)) == len(joined), "a row went to two clients"
    assert joined.min() >= 0 and joined.max() < rows
    if complete:
        assert len(joined) == rows


def test_iid_is_balanced_seeded_and_mixes_labels(digits_bundle):
    labels = digits_bundle.train.y  # 1200 rows
    parts = iid(labels, 7, seed=3)
    assert_disjoint_cover(parts, len(labels))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(torch.equal(a, b) for a, b in zip(parts, iid(labels, 7, seed=3)))
    assert not torch.equal(parts[0], iid(labels, 7, seed=4)[0])
    histogram = label_histogram(labels, parts, 10)
    assert histogram.sum() == len(labels) and (histogram > 0).all()  # every client sees every digit
    assert label_skew(histogram) < 0.15


def test_shards_give_each_client_two_labels(digits_bundle):
    """McMahan et al. 2017: sort by label, 2 shards per client. With class sizes a multiple of the shard
    size (100 rows per digit, shards of 50) no shard straddles two digits: at most 2 labels per client."""
    labels = digits_bundle.train.y
    balanced = torch.cat([torch.nonzero(labels == k).squeeze(1)[:100] for k in range(10)])
    parts = shards(labels[balanced], clients=10, per_client=2, seed=0)
    assert_disjoint_cover(parts, len(balanced))
    counts = (label_histogram(labels[balanced], parts, 10) > 0).sum(1)
    assert counts.max() == 2 and (counts == 2).sum() >= 7  # two shards of one digit are possible, rarely
    assert [len(p) for p in parts] == [100] * 10


def test_shards_on_mnist_as_in_the_paper():
    """100 clients x 2 shards of 300 MNIST images: most clients hold exactly two digits."""
    cfg = load_config(REPO / "configs/federated-mnist.toml", ["federate.partition=shards"])
    from behemoth.data import load_data
    from behemoth.federated.partition import partition

    labels = load_data(cfg.data).train.y
    parts = partition(labels, cfg.federate)
    assert_disjoint_cover(parts, len(labels))
    histogram = label_histogram(labels, parts, 10)
    counts = (histogram > 0).sum(1)
    assert counts.median() == 2 and counts.max() <= 4 and (counts == 2).sum() >= 60
    assert label_skew(histogram) > 0.7


def test_dirichlet_skew_grows_as_alpha_falls(digits_bundle):
    labels = digits_bundle.train.y
    skews = []
    for alpha in (100.0, 1.0, 0.1):
        parts = dirichlet(labels, clients=8, alpha=alpha, seed=0, min_size=10)
        assert_disjoint_cover(parts, len(labels))
        assert min(map(len, parts)) >= 10
        skews.append(label_skew(label_histogram(labels, parts, 10)))
    assert skews[0] < 0.1 < skews[1] < skews[2], skews
    classes_at_01 = (label_histogram(labels, dirichlet(labels, 8, 0.1, 0), 10) > 0).sum(1).float().mean()
    assert classes_at_01 < 7  # few digits per client at alpha = 0.1


def test_partition_errors_name_the_field(digits_bundle):
    with pytest.raises(ConfigError, match="federate.partition = 'shards'"):
        shards(digits_bundle.train.y[:50], clients=40, per_client=2, seed=0)
    with pytest.raises(ConfigError, match="federate.alpha"):
        dirichlet(digits_bundle.train.y, clients=100, alpha=0.01, seed=0, min_size=12, max_draws=3)


def test_show_partition_prints_histograms_and_writes_nothing(tmp_path):
    done = subprocess.run(
        behemoth_cmd(
            "federate",
            "federated-digits",
            "--show-partition",
            f"runs_dir={tmp_path}",
            "federate.partition=shards",
            "federate.clients=5",
        ),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert len(lines) == 5  # one row per client
    labels_held = [int(line.strip("│ ").split("│")[-1]) for line in lines]
    assert all(1 <= n <= 4 for n in labels_held)
    assert "label skew" in done.stdout and "shards, 2 shards each" in done.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["federate.secagg=true", "federate.strategy=krum"], "so it needs strategy = 'fedavg'"),
        (["federate.secagg=true", "federate.secagg_shares=5"], "only 4 are sampled per round"),
        (
            [
                "federate.strategy=krum",
                "federate.clients=4",
                "federate.fraction=1.0",
                "federate.krum_malicious=1",
            ],
            "needs more than 4 clients per round",
        ),
        (["federate.dp.mode=client", "federate.strategy=fedprox"], "would drop the proximal term"),
        (
            ["federate.faults.nan_clients=[7]", "federate.clients=4"],
            "federate.faults.nan_clients: 7 is not a partition",
        ),
        (["federate.fraction=0"], "federate.fraction = 0: Input should be greater than 0"),
        (["federate.strategy=fedsgd"], "federate.strategy = 'fedsgd'"),
    ],
)
def test_bad_federate_config_fails_at_load(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/federated-digits.toml", overrides)
    assert fragment in str(info.value)


def test_recipes_load():
    digits = load_config(REPO / "configs/federated-digits.toml")
    assert digits.federate.clients == 4 and digits.federate.sampled_clients == 4
    mnist = load_config(REPO / "configs/federated-mnist.toml")
    assert (
        mnist.federate.clients,
        mnist.federate.sampled_clients,
        mnist.federate.local_epochs,
        mnist.federate.local_batch,
    ) == (100, 10, 5, 10)
