"""The Flower ServerApp: starts the strategy over the Grid, evaluates the global model each round, writes
metrics and checkpoints. The same `serve` runs under simulation (`make_server_app`, in-process) and under
deployment (`app`, started by the SuperLink, which passes the run directory as run config `run-dir`).
"""

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from behemoth.config import RunConfig, load_config
from behemoth.data import load_data
from behemoth.errors import ConfigError, RunDirError
from behemoth.federate.exchange import CONFIG_KEY, config_to_json, federated_model, load_arrays, to_arrays
from behemoth.federate.metrics import (
    RoundRecorder, TargetReached, attach_run_log, log, read_records, summarize, trim_records,
)
from behemoth.federate.partition import partition
from behemoth.federate.privacy import PrivacyLedger, noise_multiplier_for
from behemoth.federate.state import (
    FederatedState, load_latest, restore_strategy, rng_state, save_round, set_rng_state, strategy_state,
)
from behemoth.federate.strategies import build_strategy, innermost
from behemoth.runs import write_json
from behemoth.train import resolve_device, save_weights

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


def serve(grid: Grid, cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Run the remaining rounds of `cfg.federate` over `grid`; return the summary written to summary.json."""
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
    start = 0
    if saved is not None:
        start = saved.round
        load_arrays(model, ArrayRecord.from_torch_state_dict(saved.weights))
        set_rng_state(saved.meta["rng"])
        ledger.load_state_dict(saved.meta["privacy"])
        trim_records(run_dir / "metrics.jsonl", start)
    strategy = build_strategy(fed, ledger, round_offset=start)
    if saved is not None:
        restore_strategy(innermost(strategy), saved.strategy)
        log.info("resuming after round %d of %d (strategy state: %s)", start, fed.rounds,
                 ", ".join(saved.strategy) or "none")

    def checkpoint(r: int, arrays: ArrayRecord) -> None:
        save_round(run_dir, FederatedState(
            round=r, weights={k: v.clone() for k, v in arrays.to_torch_state_dict().items()},
            strategy=strategy_state(innermost(strategy)),
            meta={"rng": rng_state(), "privacy": ledger.state_dict()},
        ))

    device = resolve_device(cfg.train.device)
    model.to(device)
    settings = dict(batch_size=cfg.data.eval_batch_size, precision=cfg.train.precision, device=device,
                    channels_last=cfg.train.channels_last)
    recorder = RoundRecorder(run_dir, model, data.test, data.spec, settings, strategy, ledger, fed.rounds,
                             fed.target_accuracy, fed.faults.crash_after_round, checkpoint)
    shared = {CONFIG_KEY: config_to_json(cfg)}
    if fed.dp.mode == "client":
        shared["dp-noise"] = ledger.noise
    log.info("%s: %d clients, %d per round, %s, E=%d B=%s, %s partition, rounds %d..%d%s", cfg.name, fed.clients,
             fed.sampled_clients, fed.strategy, fed.local_epochs, fed.local_batch or "inf", fed.partition,
             start + 1, fed.rounds, f", dp {fed.dp.mode} noise {ledger.noise:.3g}" if fed.dp.mode != "off" else "")
    stop = "rounds"
    try:
        strategy.start(grid, initial_arrays=to_arrays(model), num_rounds=fed.rounds - start, timeout=fed.timeout,
                       train_config=ConfigRecord(dict(shared)), evaluate_config=ConfigRecord(dict(shared)),
                       evaluate_fn=recorder)
    except TargetReached:
        stop = "target"
    return finish(run_dir, model, cfg, stop)


def finish(run_dir: Path, model: torch.nn.Module, cfg: RunConfig, stop: str) -> dict[str, Any]:
    """model.safetensors (the last global model evaluated) and summary.json."""
    save_weights(model, run_dir / "model.safetensors")
    fed = cfg.federate
    summary = {"run": str(run_dir), "model": cfg.model.name, "dataset": cfg.data.name, "strategy": fed.strategy,
               "clients": fed.clients, "clients_per_round": fed.sampled_clients, "partition": fed.partition,
               "stop_reason": stop, "dp": fed.dp.mode,
               **summarize(read_records(run_dir / "metrics.jsonl"), fed.target_accuracy)}
    write_json(run_dir / "summary.json", summary)
    log.info("done: %d rounds, test accuracy %.4f, summary in %s", summary["rounds"], summary["test"]["acc"] or 0.0,
             run_dir / "summary.json")
    return summary
