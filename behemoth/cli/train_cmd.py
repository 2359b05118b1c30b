"""`behemoth train`: train a model from a config (or resume a run)."""

from pathlib import Path

import typer
from rich.console import Console

from behemoth.cli.app import app, resolve_config, split_config_args
from behemoth.config import load_config
from behemoth.errors import BehemothError
from behemoth.pipeline import run_training
from behemoth.runs import open_run

console = Console(stderr=False)


class TrainingDiverged(BehemothError):
    """Raised after a run stopped on a non-finite loss (the last good checkpoint is kept)."""


@app.command(no_args_is_help=False)
def train(
    args: list[str] = typer.Argument(None, help="CONFIG (a .toml file or a recipe name such as mnist-cnn) "
                                     "followed by overrides like train.lr=0.05"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/<name> if it exists."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar or log lines."),
) -> None:
    """Train a model. Writes runs/<name>/ (config, checkpoints, metrics, TensorBoard logs, summary)."""
    config_arg, overrides = split_config_args(args or [])
    if resume is not None:
        if config_arg:
            raise BehemothError("--resume takes the run directory; do not also pass a config file")
        run_dir, cfg = open_run(resume, overrides)
    else:
        cfg = load_config(resolve_config(config_arg or "mnist-cnn"), overrides)
        run_dir = None
    summary = run_training(cfg, overwrite=overwrite, resume=run_dir, progress=not no_progress)
    if summary["diverged"]:
        raise TrainingDiverged(f"{summary['stop_reason']}; last good checkpoint kept in {summary['run']}/checkpoints")
    print_summary(summary)


def print_summary(summary: dict) -> None:
    line = (f"run {summary['run']}: {summary['steps']} steps in {summary['train_seconds']:.1f}s "
            f"({summary['samples_per_second']:,.0f} samples/s, peak {summary['peak_memory_mb']:.0f} MB)")
    console.print(line)
    if "test" in summary:
        test = summary["test"]
        extra = f" perplexity {test['perplexity']:.2f}" if "perplexity" in test else ""
        console.print(f"test accuracy {test['acc']:.4f} loss {test['loss']:.4f}{extra}")
