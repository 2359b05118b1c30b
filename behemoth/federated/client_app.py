"""The Flower ClientApp: a SuperNode's side of every round, in simulation and in deployment alike.

The trust boundary. A client takes its model, data, privacy and trust settings from its OWN config, never
from a message: a server sends the global weights ("arrays") and a few round settings ("config", checked
against RoundSettings: the round, lr, local epochs, FedProx's mu, a simulated failure). Any other record or
setting, and arrays that do not fit the client's own model (names, shapes, dtypes, all finite), refuse
the round: logged here, and raised, so the reply is an error that the server counts as a failed client.
With federate.adapters_only the arrays are the LoRA adapters alone, both ways (exchange.exchanged_state).

Where the own config comes from is the one thing simulation and deployment do differently, and
`own_config` is the one place that decides it:

- simulation: `make_client_app(cfg)` binds the config of the `behemoth federate` process that starts the
  virtual SuperNodes (the user's own, on this machine); Ray carries it to its workers inside the app;
- deployment: the module's `app` has none bound, so each SuperNode's own node config names it, as its
  operator started it: `flower-supernode --node-config "... behemoth-config='/path/config.toml'"` (a TOML
  file or a run directory), which no server can change.

Everything after that (the checks, the training, the reply) is the same code. The node's `partition-id`
(node config) picks its slice of the training data. The reply holds the updated weights and a
MetricRecord whose `num-examples` weights the average. `train_round` and `evaluate_round` hold the work
itself, which the SecAgg+ ClientApp (secagg_client.py) shares.
"""

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from behemoth.config import RunConfig, load_config
from behemoth.config.federate import RefusedMessage, RoundSettings, parse_round_settings
from behemoth.data import DataBundle, TensorSplit
from behemoth.errors import ConfigError
from behemoth.federated.exchange import client_seed, exchanged_state, federated_model, load_checked
from behemoth.federated.local import local_train, poison_update
from behemoth.federated.node_order import PARTITION_KEY
from behemoth.federated.partition import partition
from behemoth.federated.privacy import noise_multiplier_for, secure_seed
from behemoth.models.trust import ENV_VAR, parse_trust_list, trust_code
from behemoth.runs import RunDir
from behemoth.training import evaluate, resolve_device
from behemoth.training.assembly import load_run_data

log = logging.getLogger("behemoth.federated")

NODE_CONFIG_KEY = "behemoth-config"  # node config entry naming the client's own config (deployment)
MESSAGE_RECORDS = {"arrays": ArrayRecord, "config": ConfigRecord}  # all a server's message may hold
Handler = Callable[[Message, Context], Message]


@functools.cache
def trust_own_environment() -> None:
    """The modules this client's user allowed (BEHEMOTH_TRUST_CODE, which `behemoth --trust-code` exports to
    the SuperNodes and Ray actors it starts). A ClientApp is its own process's entry point, so this is the one
    place it reads that variable; nothing a server sends can add to it."""
    trust_code(*parse_trust_list(os.environ.get(ENV_VAR, "")))


def own_config(context: Context, bound: RunConfig | None) -> RunConfig:
    """The client's own config: `bound` into its ClientApp (simulation), else the file or run directory its
    SuperNode's node config names (deployment). Never anything a message carries."""
    trust_own_environment()
    if bound is not None:
        return bound
    ref = context.node_config.get(NODE_CONFIG_KEY)
    if not isinstance(ref, str) or not ref:
        raise ConfigError(
            f"this SuperNode's node config has no {NODE_CONFIG_KEY!r}: start flower-supernode with "
            f"--node-config \"partition-id=I num-partitions=K {NODE_CONFIG_KEY}='/path/config.toml'\""
        )
    return _read_own_config(ref)


@functools.lru_cache(maxsize=4)
def _read_own_config(ref: str) -> RunConfig:
    """The config at `ref` (a .toml file, or a run directory's config.toml), read once per process."""
    path = Path(ref).expanduser()
    return load_config(RunDir(path).config_file if path.is_dir() else path)


def message_parts(msg: Message) -> tuple[RoundSettings, ArrayRecord]:
    """The round settings and the arrays of a server's message, which may hold nothing else."""
    unexpected = sorted(set(msg.content.keys()) - set(MESSAGE_RECORDS))
    if unexpected:
        raise RefusedMessage(
            f"the server sent a record {unexpected[0]!r}; a round carries only {', '.join(MESSAGE_RECORDS)}"
        )
    for name, kind in MESSAGE_RECORDS.items():
        if not isinstance(msg.content.get(name), kind):
            raise RefusedMessage(f"the server's message has no {kind.__name__} {name!r}")
    return parse_round_settings(msg.content["config"]), msg.content["arrays"]


def log_refusal(context: Context, what: str, refused: RefusedMessage) -> None:
    """The client's own record of a refused round (the server sees the same line as the failure reason)."""
    log.warning(
        "partition %s refused the server's %s: %s", context.node_config.get("partition-id"), what, refused
    )


def logs_refusals(handler: Handler) -> Handler:
    """A message handler that logs a RefusedMessage before Flower turns it into an error reply."""

    @functools.wraps(handler)
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except RefusedMessage as refused:
            log_refusal(context, f"{msg.metadata.message_type} message", refused)
            raise

    return run


@functools.lru_cache(maxsize=2)
def _data_and_partitions(config_json: str) -> tuple[DataBundle, list[torch.Tensor]]:
    """Load the data and split it once per process (a Ray actor or a SuperNode's app process serves many
    rounds); keyed by the client's own config, so another run's config gets its own entry."""
    cfg = RunConfig.model_validate_json(config_json)
    data = load_run_data(cfg)
    return data, partition(data.train.y, cfg.federate)


@functools.lru_cache(maxsize=2)
def _own_noise(config_json: str) -> float:
    """The DP-SGD noise multiplier of the client's own federate.dp (with target_epsilon: calibrated over all
    partitions, as the server's ledger does); a server cannot lower it."""
    cfg = RunConfig.model_validate_json(config_json)
    _, parts = _data_and_partitions(config_json)
    return noise_multiplier_for(cfg.federate, [len(p) for p in parts])


def own_partition(cfg: RunConfig, context: Context) -> int:
    """This node's partition id (node config), checked against its own config's client count."""
    pid, count = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    if count != cfg.federate.clients or not 0 <= pid < count:
        raise ConfigError(
            f"this SuperNode has partition-id={pid} num-partitions={count}, but the run has "
            f"federate.clients = {cfg.federate.clients}"
        )
    return pid


def client_split(cfg: RunConfig, context: Context) -> tuple[DataBundle, TensorSplit, int]:
    """This node's data bundle, training partition and partition id, from its own config."""
    pid = own_partition(cfg, context)
    data, parts = _data_and_partitions(cfg.model_dump_json())
    rows = parts[pid]
    return data, TensorSplit(data.train.x[rows], data.train.y[rows]), pid


def round_config(cfg: RunConfig, settings: RoundSettings) -> RunConfig:
    """The client's own config with the server's lr and local epochs for this round. Under client DP the
    server may neither raise the local epochs above the client's own (the noise was calibrated to them, and
    each epoch spends privacy) nor ask for FedProx's term (DP-SGD's clipping would drop its gradient)."""
    fed = cfg.federate
    if fed.dp.mode == "client" and (settings.local_epochs or 0) > fed.local_epochs:
        raise RefusedMessage(
            f"local-epochs = {settings.local_epochs}: above this client's federate.local_epochs = "
            f"{fed.local_epochs}, which its DP-SGD noise was calibrated to"
        )
    if fed.dp.mode == "client" and settings.proximal_mu > 0:
        raise RefusedMessage("proximal-mu: not with this client's federate.dp.mode = 'client'")
    epochs = settings.local_epochs or fed.local_epochs
    lr = settings.lr or cfg.train.lr
    return cfg.model_copy(
        update={
            "federate": fed.model_copy(update={"local_epochs": epochs}),
            "train": cfg.train.model_copy(update={"lr": lr}),
        }
    )


@dataclass
class ClientUpdate:
    """One client's round, whichever ClientApp carries it (message API, or SecAgg+'s legacy FitRes)."""

    start: dict[str, torch.Tensor]  # the global weights received
    weights: dict[str, torch.Tensor]  # after local training (and any simulated poisoning)
    metrics: dict[str, int | float]  # num-examples (FedAvg's weight), training figures, DP bookkeeping
    seed: int  # this client's seed for the round: by run seed without DP, from os.urandom with it


def train_round(
    cfg: RunConfig,
    settings: RoundSettings,
    context: Context,
    arrays: ArrayRecord | Sequence[np.ndarray],
) -> ClientUpdate:
    """Local training on this node's partition from the global `arrays`, under the client's own config
    `cfg` and the server's round `settings`: seeds, DP-SGD noise, FedProx's mu, a simulated failure,
    poisoned replies (federate.faults, the client's own)."""
    local_cfg = round_config(cfg, settings)
    data, split, pid = client_split(cfg, context)
    fed = cfg.federate
    torch.set_num_threads(fed.client_threads)
    model = federated_model(cfg, data.spec)
    load_checked(model, arrays, fed.adapters_only)
    # what travels: the whole state_dict, or with federate.adapters_only the adapters alone
    global_weights = {k: v.detach().clone() for k, v in exchanged_state(model, fed.adapters_only).items()}
    private = fed.dp.mode == "client"
    seed = secure_seed() if private else client_seed(fed.seed, settings.server_round, pid)
    result = local_train(
        model,
        split,
        data.spec,
        local_cfg,
        seed,
        proximal_mu=settings.proximal_mu,
        noise_multiplier=_own_noise(cfg.model_dump_json()) if private else None,
        fail_after=settings.fail_after_steps,
    )
    weights = {key: result.weights[key] for key in global_weights}  # the reply: the same entries
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
    cfg: RunConfig,
    settings: RoundSettings,
    context: Context,
    arrays: ArrayRecord | Sequence[np.ndarray],
) -> dict[str, int | float]:
    """The global model on this client's own partition (federate.fraction_evaluate > 0): how well one
    model fits every silo, which is what non-IID data makes hard. `settings` were checked; none apply."""
    data, split, _ = client_split(cfg, context)
    torch.set_num_threads(cfg.federate.client_threads)
    model = federated_model(cfg, data.spec)
    load_checked(model, arrays, cfg.federate.adapters_only)
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


def make_client_app(bound: RunConfig | None = None) -> ClientApp:
    """The ClientApp: `bound` is the client's own config in simulation; None in deployment (own_config)."""
    client = ClientApp()

    @client.train()
    @logs_refusals
    def train(msg: Message, context: Context) -> Message:
        settings, arrays = message_parts(msg)
        update = train_round(own_config(context, bound), settings, context, arrays)
        content = {"arrays": ArrayRecord.from_torch_state_dict(update.weights)}
        return Message(content=RecordDict({**content, "metrics": MetricRecord(update.metrics)}), reply_to=msg)

    @client.evaluate()
    @logs_refusals
    def evaluate_local(msg: Message, context: Context) -> Message:
        settings, arrays = message_parts(msg)
        metrics = evaluate_round(own_config(context, bound), settings, context, arrays)
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    @client.query()
    @logs_refusals
    def partition_id(msg: Message, context: Context) -> Message:
        """The server asks each node once which partition it holds, so that it samples clients in
        partition order and a seed repeats its picks (node_order.py). The question carries nothing."""
        if msg.content.keys():
            raise RefusedMessage(f"a partition query carries no records; got {sorted(msg.content.keys())}")
        pid = own_partition(own_config(context, bound), context)
        return Message(content=RecordDict({"node": MetricRecord({PARTITION_KEY: pid})}), reply_to=msg)

    return client


app = make_client_app()  # deployment: each SuperNode's own config, named by its node config
