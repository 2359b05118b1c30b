"""`behemoth explain`: attributions for a trained run's samples, with pictures and fidelity figures."""

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from behemoth import pipeline
from behemoth.cli.app import app
from behemoth.config.explain import COMPLETE_METHODS, METHODS

console = Console()


@app.command()
def explain(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/mnist-cnn."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. explain.max_steps=1024."),
    method: str = typer.Option(
        None, help=f"Attribution method: {' | '.join(METHODS)} (default: [explain] method)."
    ),
    samples: int = typer.Option(None, min=1, help="How many samples of the split to explain (the first N)."),
    target: str = typer.Option(None, help="Explain the predicted class (pred) or the true label (label)."),
    split: str = typer.Option(None, help="test, val or train."),
    packed: Path = typer.Option(
        None,
        "--packed",
        help="Explain this compressed model (.bhm from `behemoth "
        "compress`) instead, and compare its attributions with the run's (rank correlation).",
    ),
    compressed: bool = typer.Option(
        False, "--compressed", help="Shorthand for --packed RUN/compressed/model.bhm."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Attribute predictions to inputs (Captum), draw them, and report how faithful they are.

    Writes <run>/explain/<method>/attributions.json and grid.png (images), tokens.html (text) or
    features.png (tables). Fidelity: IG completeness error, deletion/insertion AUC, infidelity and a
    model-randomization check. With --packed/--compressed: <run>/explain/<method>-compressed/, plus the
    Spearman rank correlation of each sample's attributions before vs after compression.
    """
    with Progress(
        TextColumn("explain"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("explain", total=samples)
        record = pipeline.explain(
            run,
            list(overrides or []),
            method=method,
            samples=samples,
            target=target,
            split=split,
            packed=packed,
            compressed=compressed,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    print_fidelity(record)
    console.print(f"written {record['out_dir']}/attributions.json and {record['picture']}")


def print_fidelity(record: dict) -> None:
    summary = record["fidelity"]["summary"]
    table = Table(
        title=f"{record['method']} on {record['samples']} {record['split']} samples "
        f"(target: {record['target']}; {record['attributions_per_second']:.1f} attributions/s)"
    )
    for column in ("figure", "mean", "median", "max", "reads"):
        table.add_column(column)
    reads = {
        "completeness_error": "|Σattr−Δf|/|Δf| (IG: < tol)"
        if record["method"] in COMPLETE_METHODS
        else "no completeness axiom",
        "deletion_auc": "lower is better",
        "insertion_auc": "higher is better",
        "infidelity": "lower is better",
        "randomization_spearman": "low: weights matter",
    }
    if "compression_spearman" in summary:
        reads["compression_spearman"] = "vs uncompressed: 1 = same ranking"
    for key, text in reads.items():  # one row per figure; names shortened to fit 80 columns
        row = summary.get(key)
        if row is None:
            table.add_row(key, "n/a", "", "", "not for tokens" if key == "infidelity" else "off")
            continue
        fmt = (
            (lambda v: "—" if v is None else f"{v:.2%}")
            if key == "completeness_error"
            else (lambda v: "—" if v is None else f"{v:.4g}")
        )
        table.add_row(
            key.replace("randomization_spearman", "random_spearman").replace("compression_", "compressed_"),
            fmt(row["mean"]),
            fmt(row["median"]),
            fmt(row["max"]),
            text,
        )
    console.print(table)
    if record["n_steps_used"] is not None:
        steps = record["n_steps_used"]
        console.print(
            f"IG steps used per sample: min {min(steps)}, max {max(steps)} (baseline: {record['baseline']})"
        )
    else:
        console.print(f"baseline: {record['baseline']}")
