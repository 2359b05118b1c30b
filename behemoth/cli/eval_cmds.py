"""`behemoth evaluate` and `behemoth predict`: use a trained run."""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from behemoth import pipeline
from behemoth.cli.app import app
from behemoth.runs import write_json

console = Console()


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/mnist-cnn."),
    split: str = typer.Option("test", help="Which split to evaluate: test, val or train."),
    out: Path = typer.Option(None, help="Where to write the JSON (default: <run>/eval.json)."),
    packed: Path = typer.Option(
        None,
        "--packed",
        help="Score this compressed model (.bhm from `behemoth compress`) on the run's data instead of its "
        "trained weights (default JSON: <run>/compressed/eval-<file>.json).",
    ),
) -> None:
    """Print loss, accuracy, precision, recall, F1 (macro and per class) and write them as JSON; a language
    model's perplexity on the validation and test text."""
    metrics = pipeline.evaluate(run, split, out, packed)
    print_metrics(metrics, metrics["class_names"])
    for name, scores in metrics.get("by_split", {}).items():  # language models
        console.print(
            f"{name}: perplexity {scores['perplexity']:.3f} (mean token cross-entropy {scores['loss']:.4f} "
            f"over {scores['tokens']:,} tokens)"
        )
    console.print(f"written {metrics['file']}")


def print_metrics(metrics: dict, class_names: list[str]) -> None:
    head = Table(title=f"{metrics['split']} ({metrics['samples']} samples)")
    for key in (
        "loss",
        "acc",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "perplexity",
        "samples_per_second",
    ):
        if key in metrics:
            head.add_column(key)
    head.add_row(
        *(
            f"{metrics[k]:.4f}" if k != "samples_per_second" else f"{metrics[k]:,.0f}"
            for k in (
                "loss",
                "acc",
                "precision_macro",
                "recall_macro",
                "f1_macro",
                "perplexity",
                "samples_per_second",
            )
            if k in metrics
        )
    )
    console.print(head)
    if "f1_per_class" not in metrics:
        return
    per_class = Table(title="per class")
    for column in ("class", "precision", "recall", "f1"):
        per_class.add_column(column)
    names = class_names or [str(i) for i in range(len(metrics["f1_per_class"]))]
    for i, name in enumerate(names):
        per_class.add_row(
            name, *(f"{metrics[f'{m}_per_class'][i]:.4f}" for m in ("precision", "recall", "f1"))
        )
    console.print(per_class)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/mnist-cnn."),
    inputs: Path = typer.Argument(..., help="An image, a folder of images, or a .npy/.npz array (key x)."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="How many classes to show per input."),
    out: Path = typer.Option(None, help="Also write the predictions as JSON here."),
) -> None:
    """Predict classes for new inputs with a trained run."""
    rows = pipeline.predict(run, inputs, top_k)
    for row in rows:
        console.print(
            f"{row['index']}: "
            + ", ".join(f"{name} ({q:.3f})" for name, q in zip(row["classes"], row["probabilities"]))
        )
    if out:
        write_json(out, rows)
