"""The Flower ClientApp: a SuperNode's side of every round, in simulation and in deployment alike.

A train message carries the global weights and a ConfigRecord with the run config (JSON) and the round's
settings; the node's `partition-id` (node config) picks its slice of the training data. The reply holds the
updated weights and a MetricRecord whose `num-examples` weights the average. `train_round` and
`evaluate_round` hold the work itself, which the SecAgg+ ClientApp (secagg_client.py) shares.
"""

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from behemoth.config import RunConfig
from behemoth.data import DataBundle, TensorSplit
from behemoth.errors import ConfigError
from behemoth.federated.exchange import (
    CONFIG_KEY,
    client_seed,
    config_from_json,
    federated_model,
    load_arrays,
)
from behemoth.federated.local import local_train, poison_update
from behemoth.federated.partition import partition
from behemoth.training import evaluate, resolve_device
from behemoth.training.assembly import load_run_data

log = logging.getLogger("behemoth.federated")
app = ClientApp()


@functools.lru_cache(maxsize=2)
def _data_and_partitions(config_json: str) -> tuple[DataBundle, list[torch.Tensor]]:
    """Load the data and split it once per process (a Ray actor or a SuperNode's app process serves many
    rounds); keyed by the config JSON, so another run's config gets its own entry."""
    cfg = config_from_json(config_json)
    data = load_run_data(cfg)
    return data, partition(data.train.y, cfg.federate)


def client_split(cfg_json: str, context: Context) -> tuple[RunConfig, DataBundle, TensorSplit, int]:
    """This node's config, data bundle, training partition and partition id."""
    cfg = config_from_json(cfg_json)
    pid, count = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    if count != cfg.federate.clients or not 0 <= pid < count:
        raise ConfigError(
            f"this SuperNode has partition-id={pid} num-partitions={count}, but the run has "
            f"federate.clients = {cfg.federate.clients}"
        )
    data, parts = _data_and_partitions(cfg_json)
    rows = parts[pid]
    return cfg, data, TensorSplit(data.train.x[rows], data.train.y[rows]), pid


@dataclass
class ClientUpdate:
    """One client's round, whichever ClientApp carries it (message API, or SecAgg+'s legacy FitRes)."""

    start: dict[str, torch.Tensor]  # the global weights received
    weights: dict[str, torch.Tensor]  # after local training (and any simulated poisoning)
    metrics: dict[str, int | float]  # num-examples (FedAvg's weight), training figures, DP bookkeeping
    seed: int  # this client's seed for the round (local shuffles, DP noise)


def train_round(
    config: Mapping[str, Any], context: Context, arrays: ArrayRecord | Sequence[np.ndarray]
) -> ClientUpdate:
    """Local training on this node's partition from the global `arrays`, as the round's `config` says:
    seeds, DP-SGD noise, FedProx's mu, a simulated failure, poisoned replies (federate.faults)."""
    cfg, data, split, pid = client_split(str(config[CONFIG_KEY]), context)
    fed = cfg.federate
    torch.set_num_threads(fed.client_threads)
    server_round = int(config["server-round"])
    model = federated_model(cfg, data.spec)
    load_arrays(model, arrays)
    global_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fail_after = int(config["fail-after-steps"]) if "fail-after-steps" in config else None
    noise = float(config["dp-noise"]) if fed.dp.mode == "client" else None
    seed = client_seed(fed.seed, server_round, pid)
    result = local_train(
        model,
        split,
        data.spec,
        cfg,
        seed,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        noise_multiplier=noise,
        fail_after=fail_after,
    )
    weights = result.weights
    if pid in fed.faults.scaled_clients:
        weights = poison_update(global_weights, weights, "scale", fed.faults.poison_scale)
    if pid in fed.faults.nan_clients:
        weights = poison_update(global_weights, weights, "nan", 0.0)
    metrics = {
        "num-examples": result.examples,
        "train-loss": result.loss,
        "train-acc": result.acc,
        "local-steps": result.steps,
        "partition-id": pid,
        "dp-steps": result.dp_steps,
        "dp-sample-rate": result.sample_rate,
    }
    return ClientUpdate(global_weights, weights, metrics, seed)


def evaluate_round(
    config: Mapping[str, Any], context: Context, arrays: ArrayRecord | Sequence[np.ndarray]
) -> dict[str, int | float]:
    """The global model on this client's own partition (federate.fraction_evaluate > 0): how well one
    model fits every silo, which is what non-IID data makes hard."""
    cfg, data, split, _ = client_split(str(config[CONFIG_KEY]), context)
    torch.set_num_threads(cfg.federate.client_threads)
    model = federated_model(cfg, data.spec)
    load_arrays(model, arrays)
    result = evaluate(
        model,
        split,
        data.spec,
        cfg.data.eval_batch_size,
        cfg.train.precision,
        resolve_device(cfg.train.device),
        cfg.train.channels_last,
    )
    return {"num-examples": len(split), "local-loss": result["loss"], "local-acc": result["acc"]}


@app.train()
def train(msg: Message, context: Context) -> Message:
    update = train_round(msg.content["config"], context, msg.content["arrays"])
    content = RecordDict(
        {"arrays": ArrayRecord.from_torch_state_dict(update.weights), "metrics": MetricRecord(update.metrics)}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    metrics = evaluate_round(msg.content["config"], context, msg.content["arrays"])
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
