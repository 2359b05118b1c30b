"""`behemoth demo`: the main job on the built-in default (a CNN on MNIST)."""

import typer
from rich.console import Console

from behemoth.cli.app import resolve_config, app
from behemoth.cli.train_cmd import print_summary
from behemoth.config import load_config
from behemoth.pipeline import run_training

console = Console()


@app.command()
def demo(
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/demo if it exists."),
    runs_dir: str = typer.Option("runs", help="Where to put the demo run."),
) -> None:
    """Train the default recipe (mnist-cnn) into runs/demo and print its test accuracy."""
    cfg = load_config(resolve_config("mnist-cnn"), ["name=demo", f"runs_dir={runs_dir!r}"])
    console.print("behemoth demo: training a CNN on MNIST (60k images, offline) on this machine's CPU")
    summary = run_training(cfg, overwrite=overwrite)
    print_summary(summary)
