"""The Flower ServerApp: starts the strategy over the Grid, evaluates the global model each round, writes
metrics and checkpoints. The same `serve` runs under simulation (`make_server_app`, in-process) and under
deployment (`app`, started by the SuperLink, which passes the run directory as run config `run-dir`).
The setup, checkpoints and summary it shares with SecAgg+ (secagg.py) are in server_run.py.
"""

import sys
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from behemoth.config import RunConfig, load_config
from behemoth.errors import RunDirError
from behemoth.federated.exchange import state_bytes, to_arrays
from behemoth.federated.metrics import TargetReached, attach_run_log, log
from behemoth.federated.node_order import PartitionOrderedGrid, draw_needs_order
from behemoth.federated.server_run import announce, checkpointer, finish, prepare, shared_config
from behemoth.federated.state import restore_strategy, strategy_state
from behemoth.federated.strategies import build_strategy, innermost
from behemoth.runs import RunDir

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Deployment entry point: `flwr run` passes `run-dir` (prepared by `behemoth federate --deploy`)."""
    run_dir = Path(str(context.run_config["run-dir"]))
    if not RunDir(run_dir).config_file.is_file():
        raise RunDirError(f"run-dir {run_dir} holds no config.toml")
    attach_run_log(run_dir, stream=sys.stdout)  # stdout reaches `flwr run --stream`
    serve(
        grid,
        load_config(RunDir(run_dir).config_file),
        run_dir,
        resume=bool(context.run_config.get("resume", False)),
    )


def make_server_app(cfg: RunConfig, run_dir: Path, resume: bool) -> ServerApp:
    """A ServerApp for Flower's simulation engine, holding the config (run_simulation takes no run config)."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        serve(grid, cfg, run_dir, resume)

    return server


def serve(grid: Grid, cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Run the remaining rounds of `cfg.federate` over `grid`; return the summary written to summary.json."""
    if cfg.federate.secagg:
        from behemoth.federated.secagg import serve_secagg  # Flower's legacy server API, only when asked for

        return serve_secagg(grid, cfg, run_dir, resume)
    fed = cfg.federate
    parts = prepare(cfg, run_dir, resume)
    strategy = build_strategy(fed, parts.ledger, round_offset=parts.start)
    if fed.adapters_only:  # the round log compares what travels with what the full weights would take
        strategy.full_arrays = state_bytes(parts.model.state_dict())
    if parts.saved is not None:
        restore_strategy(innermost(strategy), parts.saved.strategy)
        log.info(
            "resuming after round %d of %d (strategy state: %s)",
            parts.start,
            fed.rounds,
            ", ".join(parts.saved.strategy) or "none",
        )
    checkpoint = checkpointer(run_dir, parts.ledger, lambda: strategy_state(innermost(strategy)))
    recorder = parts.recorder(cfg, run_dir, strategy, checkpoint)
    shared = shared_config(cfg, parts.ledger)
    announce(cfg, parts)
    stop = "rounds"
    try:
        strategy.start(
            # seeded sampling names the same partitions every run
            PartitionOrderedGrid(grid, fed.timeout) if draw_needs_order(fed) else grid,
            initial_arrays=to_arrays(parts.model, fed.adapters_only),
            num_rounds=fed.rounds - parts.start,
            timeout=fed.timeout,
            train_config=ConfigRecord(dict(shared)),
            evaluate_config=ConfigRecord(dict(shared)),
            evaluate_fn=recorder,
        )
    except TargetReached:
        stop = "target"
    return finish(run_dir, parts.model, cfg, stop)
