"""`behemoth federate`: federated training on Flower (simulation or a loopback deployment), or the
per-client label histogram of the partition (--show-partition)."""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from behemoth import pipeline
from behemoth.cli.app import app, split_config_args
from behemoth.cli.printing import print_federated
from behemoth.errors import BehemothError
from behemoth.runs import open_run, run_path

console = Console(highlight=False, soft_wrap=True)


@app.command(no_args_is_help=False)
def federate(
    args: list[str] = typer.Argument(
        None,
        help="CONFIG (a .toml file or a recipe such as federated-digits) "
        "followed by overrides like federate.rounds=5",
    ),
    deploy: bool = typer.Option(
        False,
        "--deploy",
        help="Run a real deployment on this machine: flower-superlink "
        "(TLS, node authentication) and one flower-supernode per client, then shut down.",
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="With --deploy: allow federate.deploy.tls = false on an address that is not loopback "
        "(weights then cross the network unencrypted). Without it, tls = false runs on loopback only.",
    ),
    show_partition: bool = typer.Option(
        False,
        "--show-partition",
        help="Print each client's label histogram "
        "and the label skew, then stop (nothing is trained or written).",
    ),
    resume: Path = typer.Option(
        None, "--resume", help="Continue the federated run in this directory after its last completed round."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/<name> if it exists."),
    verbose: bool = typer.Option(False, "--verbose", help="Also show Flower's and Ray's own log lines."),
) -> None:
    """Federated learning: K clients each train on their own partition with behemoth's training loop;
    a Flower strategy (fedavg, fedprox, fedadam, fedmedian, fedtrimmedavg, krum) merges their updates.

    Reads the federate section of the config (clients, fraction, local_epochs, local_batch, rounds, strategy,
    target_accuracy, partition, dp, faults). Writes runs/<name>/: metrics.jsonl (one record per round:
    test accuracy and loss, bytes, time, epsilon), federate.log, federated/ checkpoints, model.safetensors,
    summary.json. Simulation by default (Flower's engine on Ray); --deploy for real processes.
    """
    config_arg, overrides = split_config_args(args or [])
    if resume is not None:
        if config_arg:
            raise BehemothError("--resume takes the run directory; do not also pass a config file")
        run_dir, cfg = open_run(resume, overrides)
    else:
        cfg = pipeline.load_config(config_arg or "federated-digits", overrides)
        run_dir = None
    if show_partition:
        print_partition(cfg)
        return
    pipeline.federate(
        cfg,
        run_dir,
        resume=resume is not None,
        deploy=deploy,
        overwrite=overwrite,
        verbose=verbose,
        show=console.print,
        stream=console.file,
        insecure=insecure,
    )
    print_federated(run_dir or run_path(cfg))


def print_partition(cfg) -> None:
    """The label histogram per client: counts per class, total, and classes held."""
    view = pipeline.partition_view(cfg)
    fed = cfg.federate
    detail = {"shards": f", {fed.shards_per_client} shards each", "dirichlet": f", alpha {fed.alpha:g}"}
    table = Table(
        title=f"{cfg.data.name}: {view.rows} training rows over {fed.clients} clients "
        f"({fed.partition}{detail.get(fed.partition, '')}, seed {fed.seed})"
    )
    table.add_column("#", justify="right")
    for name in view.class_names:
        table.add_column(name[:8], justify="right")
    table.add_column("rows", justify="right")
    table.add_column("labels", justify="right")
    for client, row in enumerate(view.histogram):
        table.add_row(
            str(client), *(str(v) if v else "." for v in row), str(sum(row)), str(sum(v > 0 for v in row))
        )
    console.print(table)
    console.print(f"label skew (mean total-variation distance to the overall label mix): {view.skew:.3f}")
