"""Flower's simulation engine on this machine: the ServerApp in-process, the clients on Ray actors
(cores / federate.client_cpus at once), `federate.clients` virtual SuperNodes. Each client's own config is
the one this process was given, bound into its ClientApp (client_app.py says why)."""

import logging
import os
from pathlib import Path

from behemoth.config import RunConfig


def run_simulated(cfg: RunConfig, run_dir: Path, resume: bool, verbose: bool = False) -> None:
    """Run (or continue) the federation in simulation; results land in run_dir."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower's only switch for its usage reports
    os.environ.setdefault(
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"
    )  # Ray's future default; silences its warning
    # Ray kills workers when the *machine's* memory passes 95%, whoever uses it; on a shared machine that
    # takes out clients for other people's jobs (and Flower does not replace killed actors). Off unless set.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    from flwr.simulation import run_simulation

    from behemoth.federated.server_app import make_server_app

    if cfg.federate.secagg:
        from behemoth.federated.secagg_client import make_secagg_app as make_client_app
    else:
        from behemoth.federated.client_app import make_client_app

    if not verbose:
        # our log lines say per round what failed and why; Flower would add a traceback per failed client
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
    fed = cfg.federate
    backend = {
        "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "logging_level": "ERROR", "log_to_driver": verbose},
    }
    run_simulation(
        server_app=make_server_app(cfg, run_dir, resume),
        client_app=make_client_app(cfg),
        num_supernodes=fed.clients,
        backend_config=backend,
        verbose_logging=verbose,
    )
