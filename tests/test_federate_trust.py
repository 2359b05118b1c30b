"""The federated trust boundary, tried as an attacker would (issue #17).

A server that names code, files or settings a client never agreed to; arrays that do not fit the client's
own model; a server that would like to subtract a client's DP noise; a deployment that would quietly run
without TLS, or admit a node it should not (tests/test_federate_tls.py). Real clients throughout: the
ClientApps' handlers called with real Flower messages and one real simulation under a malicious server.
"""

import io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from behemoth.config import load_config
from behemoth.config.federate import RefusedMessage
from behemoth.errors import ConfigError
from behemoth.federated import client_app
from behemoth.federated.client_app import client_split, make_client_app
from behemoth.federated.exchange import check_arrays, client_seed, federated_model, to_arrays
from behemoth.federated.local import local_train
from behemoth.federated.metrics import attach_run_log, read_records
from behemoth.federated.node_order import PARTITION_KEY
from behemoth.federated.secagg_client import SecAggClient, make_secagg_app
from behemoth.runs import create_run_dir, run_path, write_config
from behemoth.training.assembly import load_run_data
from tests.conftest import REPO

DIGITS = REPO / "configs/federated-digits.toml"
ROUND = {"server-round": 3, "local-epochs": 1, "lr": 0.05}  # what an honest server sends
DP = ["federate.dp.mode=client", "federate.dp.noise_multiplier=1.0"]


@pytest.fixture
def flower_identity(monkeypatch):
    """Messages need the process's task identity, which a ServerApp process has (set here as Flower's
    simulation sets it)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


@pytest.fixture(scope="module")
def own():
    """A client's own config (digits, 4 partitions, one local epoch) and the global weights it receives."""
    cfg = load_config(DIGITS, ["federate.local_epochs=1"])
    return cfg, to_arrays(federated_model(cfg, load_run_data(cfg).spec))


def node(pid: int = 0, **extra) -> Context:
    """A SuperNode's context: its partition (and anything else its operator put) in its node config."""
    node_config = {"partition-id": pid, "num-partitions": 4, **extra}
    return Context(run_id=1, node_id=100 + pid, node_config=node_config, state=RecordDict(), run_config={})


def instruction(arrays: ArrayRecord, config: dict, kind: str = MessageType.TRAIN, **records) -> Message:
    """A server's message as Flower's strategies build it, plus any `records` an attacker adds."""
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config), **records})
    return Message(content=content, message_type=kind, dst_node_id=100)


def weights(reply: Message) -> dict[str, torch.Tensor]:
    return reply.content["arrays"].to_torch_state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- a server's config beyond the round settings ----------------------------------------------------------

RUN_CONFIG_NAMING_CODE = json.dumps(
    {
        "model": {"name": "os:system", "options": {"command": "touch {marker}"}},
        "data": {"path": "/etc/passwd"},
    }
)
CONFIG_ATTACKS = {
    "the whole run config, naming os:system": (
        {"behemoth-config": RUN_CONFIG_NAMING_CODE},
        "the server sent 'behemoth-config', not a round setting",
    ),
    "a model factory": ({"model.name": "os:system"}, "the server sent 'model.name'"),
    "another local file": ({"data.path": "/etc/shadow"}, "the server sent 'data.path'"),
    "a lower DP noise": ({"dp-noise": 1e-9}, "the server sent 'dp-noise'"),
    "a string for the round": ({"server-round": "3; touch {marker}"}, "round setting 'server-round' = '3; "),
    "a boolean for the epochs": ({"local-epochs": True}, "round setting 'local-epochs' = True"),
    "an infinite lr": ({"lr": float("inf")}, "round setting 'lr' = inf: Input should be a finite number"),
    "a negative proximal mu": ({"proximal-mu": -1.0}, "round setting 'proximal-mu' = -1.0"),
}


@pytest.mark.parametrize("attack,expected", CONFIG_ATTACKS.values(), ids=list(CONFIG_ATTACKS))
def test_a_real_client_refuses_a_server_config_beyond_the_round_settings(
    flower_identity, own, tmp_path, caplog, attack, expected
):
    cfg, arrays = own
    marker = tmp_path / "pwned"
    attack = json.loads(json.dumps(attack).replace("{marker}", str(marker)))
    with caplog.at_level(logging.WARNING, "behemoth.federated"):
        for kind in (MessageType.TRAIN, MessageType.EVALUATE):
            with pytest.raises(RefusedMessage, match=re.escape(expected)):
                make_client_app(cfg)(instruction(arrays, {**ROUND, **attack}, kind), node())
    assert f"partition 0 refused the server's {MessageType.TRAIN} message: {expected}" in caplog.text
    assert f"partition 0 refused the server's {MessageType.EVALUATE} message" in caplog.text
    assert not marker.exists()


def test_a_record_beyond_arrays_and_config_is_refused(flower_identity, own):
    cfg, arrays = own
    smuggled = instruction(arrays, ROUND, run=ConfigRecord({"model.name": "os:system"}))
    with pytest.raises(
        RefusedMessage, match="the server sent a record 'run'; a round carries only arrays, config"
    ):
        make_client_app(cfg)(smuggled, node())
    missing = Message(
        RecordDict({"config": ConfigRecord(ROUND)}), message_type=MessageType.TRAIN, dst_node_id=1
    )
    with pytest.raises(RefusedMessage, match="the server's message has no ArrayRecord 'arrays'"):
        make_client_app(cfg)(missing, node())


def test_under_dp_a_server_can_neither_add_epochs_nor_switch_on_fedprox(flower_identity, own):
    """Each local epoch spends privacy and the client's noise was calibrated to its own epochs."""
    cfg = load_config(DIGITS, ["federate.local_epochs=1", *DP])
    _, arrays = own
    with pytest.raises(
        RefusedMessage, match="local-epochs = 5: above this client's federate.local_epochs = 1"
    ):
        make_client_app(cfg)(instruction(arrays, {**ROUND, "local-epochs": 5}), node())
    with pytest.raises(
        RefusedMessage, match="proximal-mu: not with this client's federate.dp.mode = 'client'"
    ):
        make_client_app(cfg)(instruction(arrays, {**ROUND, "proximal-mu": 0.1}), node())


def test_the_secagg_client_refuses_the_same_and_unknown_records(flower_identity, own):
    cfg, arrays = own
    legacy = [a.numpy() for a in arrays.values()]
    with pytest.raises(RefusedMessage, match="the server sent 'behemoth-config'"):
        SecAggClient(node(), cfg).fit(legacy, {**ROUND, "behemoth-config": RUN_CONFIG_NAMING_CODE})
    legacy[0] = np.full_like(legacy[0], np.nan)
    with pytest.raises(RefusedMessage, match=r"received array '.*' holds NaN or inf"):
        SecAggClient(node(), cfg).fit(legacy, ROUND)
    smuggled = Message(
        RecordDict({"secaggplus_configs": ConfigRecord({"stage": "setup"}), "run": ConfigRecord({"x": 1})}),
        message_type=MessageType.TRAIN,
        dst_node_id=100,
    )
    with pytest.raises(RefusedMessage, match="the server sent a record 'run', which SecAgg\\+ does not use"):
        make_secagg_app(cfg)(smuggled, node())


# ---- arrays that do not fit the client's own model --------------------------------------------------------


class Payload:
    """Unpickled, it would run a shell command (creating `marker`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickled(marker: Path) -> Array:
    """An "array" whose bytes are NumPy's format holding a pickle (an object array)."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    return Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())


def tampered(arrays: ArrayRecord, how: str, marker: Path) -> ArrayRecord:
    """The global weights, changed as `how` says in the first entry (or the entry list itself)."""
    state = {k: a.numpy() for k, a in arrays.items()}
    first = next(iter(state))
    if how == "shape":
        state[first] = np.zeros((3, 3), dtype=np.float32)
    elif how == "nan":
        state[first] = state[first].copy()
        state[first].flat[7] = np.nan
    elif how == "inf":
        state[first] = np.full_like(state[first], np.inf)
    elif how == "dtype":
        state[first] = state[first].astype(np.int64)
    elif how == "missing":
        del state[first]
    elif how == "extra":
        state["evil.weight"] = np.zeros(3, dtype=np.float32)
    record = ArrayRecord({k: Array(v) for k, v in state.items()})
    if how == "pickle":
        record[first] = pickled(marker)
    return record


ARRAY_ATTACKS = {
    "shape": r"received array '.*' has shape \(3, 3\), the model's is \(64, 64\)",
    "nan": r"received array '.*' holds NaN or inf",
    "inf": r"received array '.*' holds NaN or inf",
    "dtype": r"received array '.*' has dtype int64, the model's is torch.float32",
    "missing": r"received no array '.*'",
    "extra": r"received an array 'evil.weight' the model does not have",
    "pickle": r"received array '.*' is not a NumPy array \(Object arrays cannot be loaded when allow_pickle",
}


@pytest.mark.parametrize("how,expected", ARRAY_ATTACKS.items(), ids=list(ARRAY_ATTACKS))
def test_arrays_unlike_the_clients_own_model_are_refused(
    flower_identity, own, caplog, tmp_path, how, expected
):
    cfg, arrays = own
    marker = tmp_path / "pwned"
    with (
        caplog.at_level(logging.WARNING, "behemoth.federated"),
        pytest.raises(RefusedMessage, match=expected),
    ):
        make_client_app(cfg)(instruction(tampered(arrays, how, marker), ROUND), node())
    assert re.search("partition 0 refused the server's train message: " + expected, caplog.text)
    assert not marker.exists()


def test_a_legacy_list_of_the_wrong_length_is_refused(own):
    cfg, arrays = own
    state = federated_model(cfg, load_run_data(cfg).spec).state_dict()
    with pytest.raises(RefusedMessage, match=f"received 1 arrays for a model of {len(state)} entries"):
        check_arrays(state, [np.zeros(3)])
    assert check_arrays(state, [a.numpy() for a in arrays.values()]).keys() == state.keys()


# ---- the client's own config, in deployment ---------------------------------------------------------------


def test_a_deployed_client_trains_on_the_config_its_node_config_names(flower_identity, own, tmp_path):
    """The deployed app has no config of its own but what its SuperNode's node config names (here a run
    directory); it trains exactly as the simulation's app with the same config bound."""
    cfg, arrays = own
    write_config(tmp_path, cfg)
    deployed = client_app.app(instruction(arrays, ROUND), node(**{"behemoth-config": str(tmp_path)}))
    simulated = make_client_app(cfg)(instruction(arrays, ROUND), node())
    assert same(weights(deployed), weights(simulated))
    with pytest.raises(ConfigError, match="this SuperNode's node config has no 'behemoth-config'"):
        client_app.app(instruction(arrays, ROUND), node())


# ---- DP randomness the server cannot know, and reproducible runs without DP ------------------------------


def test_two_clients_with_the_same_config_and_seed_add_different_dp_noise(flower_identity, own, monkeypatch):
    """Everything the server knows (config, seed, round, weights) is the same in both calls, so a server
    replaying the client's round gets a third, different result: the noise came from what only the client
    had. Pin os.urandom and the two agree bitwise: it is the only source of the round's randomness."""
    cfg = load_config(DIGITS, ["federate.local_epochs=1", *DP])
    _, arrays = own
    client, msg = make_client_app(cfg), instruction(arrays, ROUND)
    first, second = weights(client(msg, node())), weights(client(msg, node()))
    for key in first:
        assert (first[key] - second[key]).abs().max() > 1e-3, key  # noise in every parameter
    monkeypatch.setattr(os, "urandom", lambda n: b"\x5a" * n)
    pinned = [weights(client(msg, node())) for _ in range(2)]
    assert same(*pinned)


def test_without_dp_a_round_is_bitwise_reproducible_by_the_seed(flower_identity, own):
    """The same (seed, round, partition) gives the same weights, bit for bit, and the very ones local_train
    gives with the seed runs always used; another round number gives others."""
    cfg, arrays = own
    client, msg = make_client_app(cfg), instruction(arrays, ROUND)
    first, second = weights(client(msg, node())), weights(client(msg, node()))
    assert same(first, second)
    data, split, _ = client_split(cfg, node())
    model = federated_model(cfg, data.spec)
    model.load_state_dict(arrays.to_torch_state_dict())
    direct = local_train(model, split, data.spec, cfg, client_seed(cfg.federate.seed, 3, 0))
    assert same(first, direct.weights)
    other_round = weights(client(instruction(arrays, {**ROUND, "server-round": 4}), node()))
    assert not same(first, other_round)


# ---- a real simulation under a malicious server -----------------------------------------------------------


class Tampering:
    """A malicious server: Flower's strategy, except that it rewrites the first three train instructions
    (a run config naming os:system, weights of the wrong shape, weights holding NaN)."""

    def __init__(self, inner, marker: Path) -> None:
        self.inner, self.marker = inner, marker

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        evil = RUN_CONFIG_NAMING_CODE.replace("{marker}", str(self.marker))
        attacks = [
            (arrays, {"behemoth-config": evil}),
            (tampered(arrays, "shape", self.marker), {}),
            (tampered(arrays, "nan", self.marker), {}),
        ]
        return [self._rewrite(m, *attack) for m, attack in zip(messages, attacks)] + messages[len(attacks) :]

    @staticmethod
    def _rewrite(message: Message, arrays: ArrayRecord, extra: dict) -> Message:
        config = ConfigRecord({**dict(message.content["config"].items()), **extra})
        return Message(
            content=RecordDict({"arrays": arrays, "config": config}),
            message_type=message.metadata.message_type,
            dst_node_id=message.metadata.dst_node_id,
        )


def test_a_malicious_server_gets_failed_clients_and_the_round_goes_on(tmp_path, monkeypatch):
    from behemoth.federated import server_app
    from behemoth.federated.simulate import run_simulated
    from behemoth.federated.strategies import build_strategy

    marker = tmp_path / "pwned"

    def malicious(fed, ledger, round_offset=0):
        guard = build_strategy(fed, ledger, round_offset)
        guard.inner = Tampering(guard.inner, marker)
        return guard

    monkeypatch.setattr(server_app, "build_strategy", malicious)
    cfg = load_config(
        DIGITS,
        [
            f"runs_dir={tmp_path}",
            "name=malicious",
            "federate.rounds=1",
            "federate.local_epochs=1",
            "federate.target_accuracy=1.0",
            "federate.client_cpus=2",
        ],
    )
    run_dir = create_run_dir(run_path(cfg), overwrite=False)
    write_config(run_dir, cfg)
    attach_run_log(run_dir, stream=None)
    saved, flwr_level = dict(os.environ), logging.getLogger("flwr").level
    try:  # Flower and Ray set PYTHONPATH, their switches and Flower's log level: keep them out of other tests
        run_simulated(cfg, run_dir, resume=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        logging.getLogger("flwr").setLevel(flwr_level)
    record = [r for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "round"][-1]
    assert (record["round"], record["clients.sampled"], record["clients.failed"]) == (1, 4, 3)
    assert record["clients.replied"] == 1 and record["aggregated"]
    log = (run_dir / "federate.log").read_text()
    assert "round 1: 3 of 4 sampled clients failed; aggregating the 1 that replied" in log
    assert "the server sent 'behemoth-config', not a round setting" in log
    assert re.search(r"received array '.*' has shape \(3, 3\)", log)
    assert re.search(r"received array '.*' holds NaN or inf", log)
    assert json.loads((run_dir / "summary.json").read_text())["client_failures"] == 3
    assert not marker.exists()


# ---- the partition query: what the server learns to sample clients by seed -----------------------------


def test_a_client_answers_the_partition_query_from_its_own_node_config_and_nothing_else(flower_identity, own):
    cfg, arrays = own
    client = make_client_app(cfg)
    for pid in (0, 3):
        question = Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=100 + pid)
        reply = client(question, node(pid))
        assert reply.content["node"][PARTITION_KEY] == pid
    with pytest.raises(RefusedMessage, match="a partition query carries no records"):
        client(instruction(arrays, ROUND, MessageType.QUERY), node())
    with pytest.raises(ConfigError, match="partition-id=9 num-partitions=4"):
        client(Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=109), node(9))
