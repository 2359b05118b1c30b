"""The federated pieces without a transport: Flower's robust strategies on a poisoned round, our guard
(rejects non-finite updates and failed replies with a log line), DP accounting against Opacus' own
PrivacyEngine, local training through behemoth's loop (FedProx, DP-SGD, simulated failure), checkpoints."""

import logging
import random

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from behemoth.config import load_config
from behemoth.config.federate import STRATEGIES
from behemoth.data.bundle import TensorSplit
from behemoth.errors import ConfigError
from behemoth.federated.local import SimulatedClientFailure, local_train
from behemoth.federated.privacy import DPSGDPlan, PoissonFeed, PrivacyLedger, rdp_epsilon
from behemoth.federated.state import FederatedState, load_latest, rng_state, save_round, set_rng_state
from behemoth.federated.strategies import STRATEGY_REGISTRY, GuardedStrategy, base_strategy, strategy_entry
from tests.conftest import REPO, mlp


@pytest.fixture
def flower_identity(monkeypatch):
    """Messages need the process's task identity, which a ServerApp process has (set here as Flower's
    simulation sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


def replies_for(updates: list[np.ndarray | None], partitions: list[int] | None = None) -> list[Message]:
    """One reply per update (None: a failed client), each answering its own train instruction."""
    out = []
    for i, update in enumerate(updates):
        ins = Message(
            content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
            message_type=MessageType.TRAIN,
            dst_node_id=100 + i,
        )
        if update is None:
            out.append(Message(Error(code=0, reason="client left"), reply_to=ins))
            continue
        metrics = MetricRecord(
            {
                "num-examples": 100,
                "train-loss": 0.5,
                "train-acc": 0.9,
                "partition-id": (partitions or list(range(len(updates))))[i],
            }
        )
        out.append(
            Message(
                content=RecordDict({"arrays": ArrayRecord({"w": _array(update)}), "metrics": metrics}),
                reply_to=ins,
            )
        )
    return out


def _array(values: np.ndarray):
    from flwr.app import Array

    return Array(values.astype(np.float32))


def poisoned_round(seed: int = 0) -> list[Message]:
    """5 honest clients near 1.0 and one scaled client at -10 (global 0 + -10 * update)."""
    rng = np.random.default_rng(seed)
    honest = [1.0 + 0.05 * rng.standard_normal(50) for _ in range(5)]
    return replies_for(honest + [np.full(50, -10.0)])


# one row per registered strategy: (name, overrides, Flower's class, attributes its options must reach)
STRATEGY_CASES = [
    ("fedavg", [], FedAvg, {}),
    ("fedprox", ["federate.proximal_mu=0.5"], FedProx, {"proximal_mu": 0.5}),
    (
        "fedadam",
        ["federate.server_lr=0.1", "federate.server_betas=[0.8, 0.9]", "federate.server_tau=0.01"],
        FedAdam,
        {"eta": 0.1, "eta_l": 1.0, "beta_1": 0.8, "beta_2": 0.9, "tau": 0.01},
    ),
    ("fedmedian", [], FedMedian, {}),
    ("fedtrimmedavg", ["federate.trim_beta=0.3"], FedTrimmedAvg, {"beta": 0.3}),
    ("krum", ["federate.krum_malicious=1", "federate.clients=12"], Krum, {"num_malicious_nodes": 1}),
]


def test_strategy_registry_builds_exactly_the_names_the_config_accepts():
    assert list(STRATEGY_REGISTRY) == list(STRATEGIES)  # config's list: flwr-free, checked at load
    assert [name for name, *_ in STRATEGY_CASES] == list(STRATEGY_REGISTRY)
    assert all(name == entry.name for name, entry in STRATEGY_REGISTRY.items())
    with pytest.raises(ConfigError, match="federate.strategy = 'fedsgd': unknown strategy .known: fedavg, "):
        strategy_entry("fedsgd")
    with pytest.raises(ConfigError, match="federate.strategy = 'fedsgd': Value error, unknown strategy"):
        load_config(REPO / "configs/federated-digits.toml", ["federate.strategy=fedsgd"])


@pytest.mark.parametrize("name,overrides,cls,options", STRATEGY_CASES, ids=[c[0] for c in STRATEGY_CASES])
def test_each_strategy_is_built_with_its_options(name, overrides, cls, options):
    cfg = load_config(
        REPO / "configs/federated-digits.toml",
        [f"federate.strategy={name}", "federate.fraction=0.5", "federate.min_clients=2", *overrides],
    )
    strategy = base_strategy(cfg.federate)
    assert type(strategy) is cls  # not a subclass: FedProx is a FedAvg
    assert (strategy.fraction_train, strategy.min_train_nodes, strategy.min_available_nodes) == (
        0.5,
        2,
        cfg.federate.clients,
    )
    assert {key: getattr(strategy, key) for key in options} == options


@pytest.mark.parametrize(
    "strategy,robust",
    [
        ("fedavg", False),
        ("fedmedian", True),
        ("fedtrimmedavg", True),
        ("krum", True),
    ],
)
def test_robust_strategies_resist_a_scaled_update(flower_identity, strategy, robust):
    cfg = load_config(
        REPO / "configs/federated-digits.toml",
        [
            f"federate.strategy={strategy}",
            "federate.clients=6",
            "federate.fraction=1.0",
            "federate.krum_malicious=1",
        ],
    )
    arrays, _ = base_strategy(cfg.federate).aggregate_train(1, poisoned_round())
    error = float(np.abs(arrays["w"].numpy() - 1.0).mean())
    if robust:
        assert error < 0.1, f"{strategy} was dragged by the poisoned update: {error}"
    else:
        assert error > 1.5  # FedAvg's mean: (5 * 1 - 10) / 6


def test_guard_rejects_non_finite_updates_and_failed_replies(flower_identity, caplog):
    cfg = load_config(
        REPO / "configs/federated-digits.toml", ["federate.clients=5", "federate.strategy=fedavg"]
    )
    ledger = PrivacyLedger("off", 0.0, 1e-5)
    guard = GuardedStrategy(base_strategy(cfg.federate), cfg.federate, ledger)
    nan = np.ones(50)
    nan[7] = np.nan
    replies = replies_for([np.full(50, 1.0), np.full(50, 2.0), np.full(50, 3.0), nan, None])
    with caplog.at_level(logging.INFO, logger="behemoth.federated"):
        arrays, metrics = guard.aggregate_train(4, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)  # the mean of the three good updates
    assert metrics["num-examples"] == 300
    stats = guard.stats[4]
    assert (len(stats.failed), len(stats.rejected), stats.replied) == (1, 1, 4)
    text = caplog.text
    assert "round 4: rejected update from partition 3: non-finite values in 'w'" in text
    assert "round 4: 1 of 5 sampled clients failed; aggregating the 3 that replied" in text
    assert "client left" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="behemoth.federated"):
        assert guard.aggregate_train(5, replies_for([nan, None])) == (None, None)
    assert "round 5: no usable update; the global model stays as it was" in caplog.text
    from behemoth.federated.strategies import FederationStalled

    assert guard.aggregate_train(6, replies_for([None])) == (None, None)
    with pytest.raises(FederationStalled, match="3 rounds in a row without a usable update"):
        guard.aggregate_train(7, replies_for([None, nan]))  # federate.max_empty_rounds = 3


def test_server_dp_wrapper_gets_only_good_replies(flower_identity):
    """Flower's DP wrapper skips a whole round when any reply is an error; behind the guard it aggregates
    the rest, clipped and noised, and the ledger counts the release."""
    cfg = load_config(
        REPO / "configs/federated-digits.toml",
        [
            "federate.clients=4",
            "federate.dp.mode=server",
            "federate.dp.noise_multiplier=0.5",
            "federate.dp.clip_norm=1",
        ],
    )
    from behemoth.federated.strategies import build_strategy

    np.random.seed(0)
    ledger = PrivacyLedger("server", 0.5, 1e-5)
    guard = build_strategy(cfg.federate, ledger)
    guard.inner.current_arrays = ArrayRecord({"w": _array(np.zeros(50))})  # configure_train would set it
    arrays, _ = guard.aggregate_train(1, replies_for([np.full(50, 1.0)] * 3 + [None]))
    w = arrays["w"].numpy()
    # each update (norm sqrt(50)) clipped to norm 1, averaged, plus N(0, (0.5 * 1 / 4)^2) noise
    assert abs(np.linalg.norm(w - w.mean()) / np.sqrt(50) - 0.125) < 0.05
    assert abs(w.mean() - 1 / np.sqrt(50)) < 0.06
    assert ledger.releases == 1 and ledger.epsilon() == pytest.approx(rdp_epsilon([(0.5, 1.0, 1)], 1e-5))


def test_client_dp_epsilon_matches_opacus_privacy_engine(digits_bundle):
    """A client's DP-SGD through behemoth's loop (320 rows, B = 16, E = 2): the steps and sample rate it
    reports give the epsilon Opacus' PrivacyEngine reports for the same training."""
    from opacus import PrivacyEngine

    cfg = load_config(
        REPO / "configs/federated-digits.toml",
        [
            "federate.dp.mode=client",
            "federate.dp.clip_norm=1.0",
            "federate.local_epochs=2",
            "federate.local_batch=16",
        ],
    )
    split = TensorSplit(digits_bundle.train.x[:320], digits_bundle.train.y[:320])
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    result = local_train(model, split, digits_bundle.spec, cfg, seed=5, noise_multiplier=1.1)
    assert (result.dp_steps, result.sample_rate) == (40, 0.05)
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    ledger = PrivacyLedger("client", 1.1, 1e-5)
    ledger.record_client(0, result.dp_steps // 2, result.sample_rate)  # round 1: one epoch's worth ...
    first = ledger.epsilon()
    ledger.record_client(0, result.dp_steps // 2, result.sample_rate)  # ... round 2: epsilon grows
    assert 0 < first < ledger.epsilon()

    reference = mlp()
    engine = PrivacyEngine(accountant="rdp")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.x, split.y), batch_size=16)
    reference, optimizer, loader = engine.make_private(
        module=reference,
        optimizer=torch.optim.SGD(reference.parameters(), lr=0.05),
        data_loader=loader,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
    )
    for _ in range(2):
        for x, y in loader:
            if len(x) == 0:
                continue
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(reference(x), y).backward()
            optimizer.step()
    assert ledger.epsilon() == pytest.approx(engine.get_epsilon(1e-5), rel=1e-9)


def test_poisson_feed_is_seeded_and_closes_each_epoch(digits_bundle):
    plan = DPSGDPlan.for_partition(200, 10)
    feed = PoissonFeed(digits_bundle.train.take(200), plan, seed=1, device=torch.device("cpu"))
    steps = list(feed.epoch(0))
    assert steps[-1][0] == plan.steps_per_epoch - 1  # the loop sees the epoch end
    sizes = [len(batches[0].y) for _, batches in steps]
    assert 5 < np.mean(sizes) < 15 and len(set(sizes)) > 3  # Poisson: about q * n, varying
    again = list(feed.epoch(0))
    assert all(torch.equal(a[1][0].x, b[1][0].x) for a, b in zip(steps, again))


def test_fedprox_term_keeps_the_update_near_the_global_model(digits_bundle):
    cfg = load_config(REPO / "configs/federated-digits.toml", ["federate.local_epochs=3"])
    split = digits_bundle.train.take(300)
    drift = {}
    for mu in (0.0, 1.0):
        model = mlp(seed=1)
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        local_train(model, split, digits_bundle.spec, cfg, seed=0, proximal_mu=mu)
        drift[mu] = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - start).norm())
    assert drift[1.0] < 0.8 * drift[0.0], drift


def test_simulated_failure_stops_local_training_mid_round(digits_bundle):
    cfg = load_config(REPO / "configs/federated-digits.toml")
    with pytest.raises(SimulatedClientFailure, match="after 3 local steps"):
        local_train(mlp(), digits_bundle.train.take(300), digits_bundle.spec, cfg, seed=0, fail_after=3)


def test_federated_checkpoint_round_trip(tmp_path):
    random.seed(11)
    np.random.seed(11)
    rng = rng_state()
    expected = (random.random(), float(np.random.rand()))
    weights = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    moments = {
        "m_t": {"w": np.ones((3, 4)), "b": np.zeros(4)},
        "v_t": {"w": np.full((3, 4), 2.0), "b": np.ones(4)},
    }
    ledger = PrivacyLedger("client", 1.0, 1e-5)
    ledger.record_client(3, 40, 0.05)
    for r in (1, 2, 3):
        save_round(
            tmp_path, FederatedState(r, weights, moments, {"rng": rng, "privacy": ledger.state_dict()})
        )
    (tmp_path / "federated" / ".tmp-half-written").mkdir()  # a crash mid-save leaves only a temp folder
    state = load_latest(tmp_path)
    assert state.round == 3 and sorted(p.name for p in (tmp_path / "federated").glob("round-*")) == [
        "round-0002",
        "round-0003",
    ]
    assert all(torch.equal(state.weights[k], weights[k]) for k in weights)
    np.testing.assert_array_equal(state.strategy["v_t"]["w"], moments["v_t"]["w"])
    set_rng_state(state.meta["rng"])
    assert (random.random(), float(np.random.rand())) == expected
    restored = PrivacyLedger("client", 1.0, 1e-5)
    restored.load_state_dict(state.meta["privacy"])
    assert restored.epsilon() == ledger.epsilon() > 0


def test_fedadam_moments_survive_a_checkpoint(flower_identity, tmp_path):
    """FedAdam's server moments go into the federated checkpoint and come back into a fresh strategy."""
    from behemoth.federated.state import restore_strategy, strategy_state

    cfg = load_config(
        REPO / "configs/federated-digits.toml", ["federate.strategy=fedadam", "federate.clients=6"]
    )
    strategy = base_strategy(cfg.federate)
    strategy.current_arrays = {"w": np.zeros(50, dtype=np.float32)}  # what configure_train records
    strategy.aggregate_train(1, poisoned_round())
    saved = strategy_state(strategy)
    assert set(saved) == {"m_t", "v_t"}
    save_round(
        tmp_path, FederatedState(1, {"w": torch.zeros(50)}, saved, {"rng": rng_state(), "privacy": {}})
    )
    fresh = base_strategy(cfg.federate)
    restore_strategy(fresh, load_latest(tmp_path).strategy)
    for name in ("m_t", "v_t"):
        np.testing.assert_array_equal(getattr(fresh, name)["w"], getattr(strategy, name)["w"])
