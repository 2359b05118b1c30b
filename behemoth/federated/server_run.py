"""What every server run shares, with or without SecAgg+: the setup (`prepare`: data, model, RNGs, the last
checkpoint), the per-round checkpoint, the round settings every client is told, the opening log line and the
closing summary. server_app.serve and secagg.serve_secagg both build on these, so neither imports the
other's module for them: server_app -> secagg -> server_run, one way.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from behemoth.config import RunConfig
from behemoth.data import TensorSplit, load_data
from behemoth.errors import ConfigError
from behemoth.federated.exchange import federated_model, load_arrays
from behemoth.federated.metrics import RoundRecorder, RoundSource, log, read_records, summarize, trim_records
from behemoth.federated.partition import partition
from behemoth.federated.privacy import PrivacyLedger, noise_multiplier_for
from behemoth.federated.state import FederatedState, load_latest, rng_state, save_round, set_rng_state
from behemoth.runs import RunDir, write_json
from behemoth.spec import DataSpec
from behemoth.training import resolve_device, save_weights
from behemoth.training.lora import save_adapter


@dataclass
class ServerParts:
    """What every server run starts from, with or without SecAgg+: the global model (initial or resumed
    weights, on its device), the test split it is evaluated on, the privacy ledger, the rounds done."""

    model: nn.Module
    test: TensorSplit
    spec: DataSpec
    settings: dict[str, Any]  # evaluate()'s keyword arguments
    ledger: PrivacyLedger
    sizes: list[int]  # training rows per partition
    start: int  # rounds completed before this run (resume)
    saved: FederatedState | None

    def recorder(
        self,
        cfg: RunConfig,
        run_dir: Path,
        strategy: RoundSource,
        on_round: Callable[[int, ArrayRecord], None],
        tags: dict[str, Any] | None = None,
    ) -> RoundRecorder:
        fed = cfg.federate
        return RoundRecorder(
            run_dir,
            self.model,
            self.test,
            self.spec,
            self.settings,
            strategy,
            self.ledger,
            fed.rounds,
            fed.target_accuracy,
            fed.faults.crash_after_round,
            on_round,
            tags,
            fed.adapters_only,
        )


def prepare(cfg: RunConfig, run_dir: Path, resume: bool) -> ServerParts:
    """Load the data, build the model, seed the RNGs Flower samples with, and restore the last checkpoint."""
    fed = cfg.federate
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = load_data(cfg.data)
    if data.test is None:
        raise ConfigError(f"data.name = {cfg.data.name!r}: no test split for the server to evaluate on")
    sizes = [len(part) for part in partition(data.train.y, fed)]
    model = federated_model(cfg, data.spec)
    ledger = PrivacyLedger(fed.dp.mode, noise_multiplier_for(fed, sizes), fed.dp.delta)
    random.seed(fed.seed)  # Flower samples clients with random.sample
    np.random.seed(fed.seed)  # Flower's DP wrapper draws its noise from NumPy's global RNG
    saved = load_latest(run_dir) if resume else None
    if saved is not None:
        load_arrays(model, ArrayRecord.from_torch_state_dict(saved.weights), fed.adapters_only)
        set_rng_state(saved.meta["rng"])
        ledger.load_state_dict(saved.meta["privacy"])
        trim_records(RunDir(run_dir).metrics, saved.round)
    device = resolve_device(cfg.train.device)
    model.to(device)
    settings = dict(
        batch_size=cfg.data.eval_batch_size,
        precision=cfg.train.precision,
        device=device,
        channels_last=cfg.train.channels_last,
    )
    start = saved.round if saved else 0
    return ServerParts(model, data.test, data.spec, settings, ledger, sizes, start, saved)


def checkpointer(
    run_dir: Path,
    ledger: PrivacyLedger,
    strategy_arrays: Callable[[], dict[str, dict[str, Any]]],
) -> Callable[[int, ArrayRecord], None]:
    """RoundRecorder's `on_round`: the round's global weights, the strategy's arrays, RNGs and ledger."""

    def checkpoint(r: int, arrays: ArrayRecord) -> None:
        save_round(
            run_dir,
            FederatedState(
                round=r,
                weights={k: v.clone() for k, v in arrays.to_torch_state_dict().items()},
                strategy=strategy_arrays(),
                meta={"rng": rng_state(), "privacy": ledger.state_dict()},
            ),
        )

    return checkpoint


def shared_config(cfg: RunConfig, _ledger: PrivacyLedger | None = None) -> dict[str, Any]:
    """The round settings every client is told every round (besides the round number Flower adds, and
    FedProx's mu): lr and local epochs. Only what behemoth.config.federate.RoundSettings allows; the run
    config and the DP noise stay here, since each client uses its own (client_app.py)."""
    return {"local-epochs": cfg.federate.local_epochs, "lr": cfg.train.lr}


def announce(cfg: RunConfig, parts: ServerParts) -> None:
    """The run's opening log line: who trains, how, and which rounds are left."""
    fed, ledger = cfg.federate, parts.ledger
    dp = f", dp {fed.dp.mode} noise {ledger.noise:.3g}" if fed.dp.mode != "off" else ""
    adapters = ", adapters only" if fed.adapters_only else ""
    secagg = f", SecAgg+ ({fed.secagg_shares} shares, threshold {fed.secagg_threshold})" if fed.secagg else ""
    log.info(
        "%s: %d clients, %d per round, %s, E=%d B=%s, %s partition, rounds %d..%d%s%s%s",
        cfg.name,
        fed.clients,
        fed.sampled_clients,
        fed.strategy,
        fed.local_epochs,
        fed.local_batch or "inf",
        fed.partition,
        parts.start + 1,
        fed.rounds,
        dp,
        secagg,
        adapters,
    )


def finish(run_dir: Path, model: torch.nn.Module, cfg: RunConfig, stop: str) -> dict[str, Any]:
    """model.safetensors (the last global model evaluated; a LoRA model's adapters only, as `behemoth train`
    saves them), the adapters in peft's format with [train.lora], and summary.json."""
    save_weights(model, RunDir(run_dir).weights)
    if cfg.train.lora is not None:
        save_adapter(model, RunDir(run_dir).adapter_dir)  # for PeftModel.from_pretrained, export --merge
    fed = cfg.federate
    summary = {
        "run": str(run_dir),
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "strategy": fed.strategy,
        "clients": fed.clients,
        "clients_per_round": fed.sampled_clients,
        "partition": fed.partition,
        "stop_reason": stop,
        "dp": fed.dp.mode,
        **({"secagg": True} if fed.secagg else {}),
        **summarize(read_records(RunDir(run_dir).metrics), fed.target_accuracy),
    }
    write_json(RunDir(run_dir).summary, summary)
    log.info(
        "done: %d rounds, test accuracy %.4f, summary in %s",
        summary["rounds"],
        summary["test"]["acc"] or 0.0,
        RunDir(run_dir).summary,
    )
    return summary
