"""`behemoth report`: one self-contained HTML page (and summary.json) for a run directory."""

from pathlib import Path

import typer
from rich.console import Console

from behemoth import pipeline
from behemoth.cli.app import app

console = Console()


@app.command()
def report(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/mnist-cnn."),
    evaluate: bool = typer.Option(
        True,
        help="Run `behemoth evaluate` first when eval.json is missing "
        "(per-class precision, recall, F1 and the confusion matrix).",
    ),
) -> None:
    """Write <run>/report/report.html (plots inlined, opens offline) and <run>/report/summary.json.

    Shows the resolved config, the data, training curves, throughput and memory, evaluation (per-class
    scores, confusion matrix) and whatever later stages left in the run (explanations, ...). Sections
    for stages that did not run are left out.
    """
    html_path, json_path = pipeline.report(run, evaluate, say=console.print)
    console.print(f"report: {html_path}\nsummary: {json_path}")
