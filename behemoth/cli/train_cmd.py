"""`behemoth train`: train a model from a config (or resume a run)."""

from pathlib import Path

import typer
from rich.console import Console

from behemoth.cli.app import app, split_config_args
from behemoth.cli.printing import print_training
from behemoth.config.optimizers import OPTIMIZERS
from behemoth.distributed import close_group, init_group, read_env
from behemoth.distributed.launch import current_command, launch
from behemoth.errors import BehemothError, RunDirError
from behemoth.pipeline import load_config
from behemoth.pipeline import train as train_run
from behemoth.runs import open_run, run_path
from behemoth.training import latest_checkpoint

console = Console(stderr=False)


class TrainingDiverged(BehemothError):
    """Raised after a run stopped on a non-finite loss (the last good checkpoint is kept)."""


@app.command(
    no_args_is_help=False,
    epilog=f"Optimizers (train.optimizer): {', '.join(OPTIMIZERS)}. Models: behemoth models.",
)
def train(
    args: list[str] = typer.Argument(
        None,
        help="CONFIG (a .toml file or a recipe name such as mnist-cnn) "
        "followed by overrides like train.lr=0.05",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/<name> if it exists."),
    resume: Path = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last checkpoint."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar or log lines."),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Processes on this machine (launched through torchrun; "
        "data.batch_size is the global batch, split across them).",
    ),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0, help="torchrun restarts of a failed group."),
    nnodes: str = typer.Option(
        "1", "--nnodes", help="Machines in the job (multi-node, with --rdzv-endpoint)."
    ),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's rank (multi-node)."),
    rdzv_endpoint: str = typer.Option(
        None, "--rdzv-endpoint", help="host:port every node can reach (multi-node)."
    ),
) -> None:
    """Train a model. Writes runs/<name>/ (config, checkpoints, metrics, TensorBoard logs, summary).

    With --nproc N (or under `torchrun -m behemoth train ...`) it trains with N processes: train.strategy =
    ddp (the default), fsdp (sharded parameters, gradients, optimizer state) or pipeline (GPT blocks split
    into stages). `behemoth plan` tells which fits in memory.
    """
    config_arg, overrides = split_config_args(args or [])
    env = read_env()
    if resume is None and env.restart_count > 0:  # torchrun restarted us: continue the run we were writing
        cfg = load_config(config_arg or "mnist-cnn", overrides)
        if latest_checkpoint(run_path(cfg)) is not None:
            resume, config_arg, overrides = run_path(cfg), None, []
    if resume is not None:
        if config_arg:
            raise BehemothError("--resume takes the run directory; do not also pass a config file")
        run_dir, cfg = open_run(resume, overrides)
    else:
        cfg = load_config(config_arg or "mnist-cnn", overrides)
        run_dir = None
        if run_path(cfg).exists() and not overwrite:  # checked before any worker starts
            raise RunDirError(
                f"run directory {run_path(cfg)} exists: pass --overwrite, or pick another name (name=...)"
            )
    env = env.on_device(cfg.train.device)
    if (nproc > 1 or rdzv_endpoint) and not env.distributed:  # the launcher: torchrun takes it from here
        launch(
            nproc,
            current_command(),
            max_restarts=max_restarts,
            nnodes=nnodes,
            node_rank=node_rank,
            rdzv_endpoint=rdzv_endpoint,
        )
        return
    init_group(env)
    try:
        summary = train_run(cfg, overwrite=overwrite, resume=run_dir, progress=not no_progress, env=env)
    finally:
        close_group()
    if summary["diverged"]:
        raise TrainingDiverged(
            f"{summary['stop_reason']}; last good checkpoint kept in {summary['run']}/checkpoints"
        )
    if env.is_main:
        print_training(summary)
