"""`behemoth explain`: attributions for a trained run's samples, with pictures and fidelity figures."""

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from behemoth import pipeline
from behemoth.cli.app import app
from behemoth.cli.printing import print_fidelity, print_generation_attributions
from behemoth.config.explain import METHODS

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
    prompt: str = typer.Option(
        None,
        "--prompt",
        help="Language models: continue this prompt greedily and attribute each generated token to the "
        "prompt's tokens (feature_ablation and ig, or --method); writes <run>/explain/generation/.",
    ),
    max_new_tokens: int = typer.Option(
        None,
        "--max-new-tokens",
        min=1,
        help="With --prompt: tokens to generate and attribute (default 8); alone: the prompt is the start "
        "of the validation text.",
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Attribute predictions to inputs (Captum), draw them, and report how faithful they are.

    Writes <run>/explain/<method>/attributions.json and grid.png (images), tokens.html (text) or
    features.png (tables). Fidelity: IG completeness error, deletion/insertion AUC, infidelity and a
    model-randomization check. With --packed/--compressed: <run>/explain/<method>-compressed/, plus the
    Spearman rank correlation of each sample's attributions before vs after compression.
    """
    if prompt is not None or max_new_tokens is not None:
        record = pipeline.explain(
            run, list(overrides or []), method=method, prompt=prompt, max_new_tokens=max_new_tokens
        )
        print_generation_attributions(record)
        console.print(f"written {record['out_dir']}/attributions.json and {record['picture']}")
        return
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
