"""The Flower ServerApp: starts the strategy over the Grid, evaluates the global model each round, writes
metrics and checkpoints. The same `serve` runs under simulation (`make_server_app`, in-process) and under
deployment (`app`, started by the SuperLink, which passes the run directory as run config `run-dir`).
"""

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from torch import nn

from behemoth.config import RunConfig, load_config
from behemoth.data import TensorSplit, load_data
from behemoth.errors import ConfigError, RunDirError
from behemoth.federated.exchange import CONFIG_KEY, config_to_json, federated_model, load_arrays, to_arrays
from behemoth.federated.metrics import (
    RoundRecorder, RoundSource, TargetReached, attach_run_log, log, read_records, summarize, trim_records,
)
from behemoth.federated.partition import partition
from behemoth.federated.privacy import PrivacyLedger, noise_multiplier_for
from behemoth.federated.state import (
    FederatedState, load_latest, restore_strategy, rng_state, save_round, set_rng_state, strategy_state,
)
from behemoth.federated.strategies import build_strategy, innermost
from behemoth.runs import write_json
from behemoth.spec import DataSpec
from behemoth.training import resolve_device, save_weights

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Deployment entry point: `flwr run` passes `run-dir` (prepared by `behemoth federate --deploy`)."""
    run_dir = Path(str(context.run_config["run-dir"]))
    if not (run_dir / "config.toml").is_file():
        raise RunDirError(f"run-dir {run_dir} holds no config.toml")
    attach_run_log(run_dir, stream=sys.stdout)  # stdout reaches `flwr run --stream`
    serve(grid, load_config(run_dir / "config.toml"), run_dir, resume=bool(context.run_config.get("resume", False)))


def make_server_app(cfg: RunConfig, run_dir: Path, resume: bool) -> ServerApp:
    """A ServerApp for Flower's simulation engine, holding the config (run_simulation takes no run config)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        serve(grid, cfg, run_dir, resume)

    return server


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

    def recorder(self, cfg: RunConfig, run_dir: Path, strategy: RoundSource,
                 on_round: Callable[[int, ArrayRecord], None], tags: dict[str, Any] | None = None) -> RoundRecorder:
        fed = cfg.federate
        return RoundRecorder(run_dir, self.model, self.test, self.spec, self.settings, strategy, self.ledger,
                             fed.rounds, fed.target_accuracy, fed.faults.crash_after_round, on_round, tags)


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
        load_arrays(model, ArrayRecord.from_torch_state_dict(saved.weights))
        set_rng_state(saved.meta["rng"])
        ledger.load_state_dict(saved.meta["privacy"])
        trim_records(run_dir / "metrics.jsonl", saved.round)
    device = resolve_device(cfg.train.device)
    model.to(device)
    settings = dict(batch_size=cfg.data.eval_batch_size, precision=cfg.train.precision, device=device,
                    channels_last=cfg.train.channels_last)
    return ServerParts(model, data.test, data.spec, settings, ledger, sizes, saved.round if saved else 0, saved)


def checkpointer(run_dir: Path, ledger: PrivacyLedger, strategy_arrays: Callable[[], dict[str, dict[str, Any]]]
                 ) -> Callable[[int, ArrayRecord], None]:
    """RoundRecorder's `on_round`: the round's global weights, the strategy's arrays, RNGs and ledger."""

    def checkpoint(r: int, arrays: ArrayRecord) -> None:
        save_round(run_dir, FederatedState(
            round=r, weights={k: v.clone() for k, v in arrays.to_torch_state_dict().items()},
            strategy=strategy_arrays(), meta={"rng": rng_state(), "privacy": ledger.state_dict()},
        ))

    return checkpoint


def shared_config(cfg: RunConfig, ledger: PrivacyLedger) -> dict[str, Any]:
    """What every client is told every round: the run config (JSON) and the DP-SGD noise (client DP)."""
    shared: dict[str, Any] = {CONFIG_KEY: config_to_json(cfg)}
    if cfg.federate.dp.mode == "client":
        shared["dp-noise"] = ledger.noise
    return shared


def announce(cfg: RunConfig, parts: ServerParts) -> None:
    fed, ledger = cfg.federate, parts.ledger
    dp = f", dp {fed.dp.mode} noise {ledger.noise:.3g}" if fed.dp.mode != "off" else ""
    secagg = f", SecAgg+ ({fed.secagg_shares} shares, threshold {fed.secagg_threshold})" if fed.secagg else ""
    log.info("%s: %d clients, %d per round, %s, E=%d B=%s, %s partition, rounds %d..%d%s%s", cfg.name, fed.clients,
             fed.sampled_clients, fed.strategy, fed.local_epochs, fed.local_batch or "inf", fed.partition,
             parts.start + 1, fed.rounds, dp, secagg)


def serve(grid: Grid, cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Run the remaining rounds of `cfg.federate` over `grid`; return the summary written to summary.json."""
    if cfg.federate.secagg:
        from behemoth.federated.secagg import serve_secagg  # Flower's legacy server API, only when asked for

        return serve_secagg(grid, cfg, run_dir, resume)
    fed = cfg.federate
    parts = prepare(cfg, run_dir, resume)
    strategy = build_strategy(fed, parts.ledger, round_offset=parts.start)
    if parts.saved is not None:
        restore_strategy(innermost(strategy), parts.saved.strategy)
        log.info("resuming after round %d of %d (strategy state: %s)", parts.start, fed.rounds,
                 ", ".join(parts.saved.strategy) or "none")
    checkpoint = checkpointer(run_dir, parts.ledger, lambda: strategy_state(innermost(strategy)))
    recorder = parts.recorder(cfg, run_dir, strategy, checkpoint)
    shared = shared_config(cfg, parts.ledger)
    announce(cfg, parts)
    stop = "rounds"
    try:
        strategy.start(grid, initial_arrays=to_arrays(parts.model), num_rounds=fed.rounds - parts.start,
                       timeout=fed.timeout, train_config=ConfigRecord(dict(shared)),
                       evaluate_config=ConfigRecord(dict(shared)), evaluate_fn=recorder)
    except TargetReached:
        stop = "target"
    return finish(run_dir, parts.model, cfg, stop)


def finish(run_dir: Path, model: torch.nn.Module, cfg: RunConfig, stop: str) -> dict[str, Any]:
    """model.safetensors (the last global model evaluated) and summary.json."""
    save_weights(model, run_dir / "model.safetensors")
    fed = cfg.federate
    summary = {"run": str(run_dir), "model": cfg.model.name, "dataset": cfg.data.name, "strategy": fed.strategy,
               "clients": fed.clients, "clients_per_round": fed.sampled_clients, "partition": fed.partition,
               "stop_reason": stop, "dp": fed.dp.mode, **({"secagg": True} if fed.secagg else {}),
               **summarize(read_records(run_dir / "metrics.jsonl"), fed.target_accuracy)}
    write_json(run_dir / "summary.json", summary)
    log.info("done: %d rounds, test accuracy %.4f, summary in %s", summary["rounds"], summary["test"]["acc"] or 0.0,
             run_dir / "summary.json")
    return summary
