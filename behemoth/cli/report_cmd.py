"""`behemoth report`: one self-contained HTML page (and summary.json) for a run directory."""

from pathlib import Path

import typer
from rich.console import Console

from behemoth.cli.app import app

console = Console()


@app.command()
def report(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/mnist-cnn."),
    evaluate: bool = typer.Option(True, help="Run `behemoth evaluate` first when eval.json is missing "
                                             "(per-class precision, recall, F1 and the confusion matrix)."),
) -> None:
    """Write <run>/report/report.html (plots inlined, opens offline) and <run>/report/summary.json.

    Shows the resolved config, the data, training curves, throughput and memory, evaluation (per-class
    scores, confusion matrix) and whatever later stages left in the run (explanations, ...). Sections
    for stages that did not run are left out.
    """
    from behemoth.reporting import build_report
    from behemoth.runs import open_run

    run_dir, _ = open_run(run)
    has_weights = (run_dir / "model.safetensors").is_file() or (run_dir / "checkpoints").is_dir()
    if evaluate and not (run_dir / "eval.json").is_file() and has_weights:
        from behemoth.cli.eval_cmds import evaluate_run

        console.print("no eval.json yet: evaluating the test split first")
        evaluate_run(run_dir, "test", run_dir / "eval.json", show=False)
    html_path, json_path = build_report(run_dir)
    console.print(f"report: {html_path}\nsummary: {json_path}")
