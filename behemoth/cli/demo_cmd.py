"""`behemoth demo`: the main job on the built-in default (MNIST): train -> evaluate -> explain -> report.

Each stage runs through the same functions as its own command, so the demo is also a smoke test of
the whole chain; it prints where the report is.
"""

import time
from pathlib import Path

import typer
from rich.console import Console

from behemoth.cli.app import app, resolve_config

console = Console()


def banner(step: int, total: int, text: str) -> None:
    console.rule(f"[bold]demo {step}/{total}: {text}")


@app.command()
def demo(
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/demo if it exists."),
    runs_dir: str = typer.Option("runs", help="Where to put the demo run."),
    samples: int = typer.Option(8, min=1, help="Test images to explain."),
) -> None:
    """The whole chain on MNIST: train the default CNN, evaluate it, explain it (Integrated Gradients with
    fidelity figures) and write one HTML report. Prints test accuracy and the report's path."""
    from behemoth.cli.eval_cmds import evaluate_run
    from behemoth.cli.explain_cmd import print_fidelity
    from behemoth.cli.train_cmd import print_summary
    from behemoth.config import load_config
    from behemoth.explain.run import explain_run
    from behemoth.pipeline import run_training
    from behemoth.report import build_report

    started = time.perf_counter()
    cfg = load_config(resolve_config("mnist-cnn"), ["name=demo", f"runs_dir={runs_dir!r}",
                                                    f"explain.samples={samples}"])
    stages = 4
    banner(1, stages, "train a CNN on MNIST (60k images, offline) on this machine")
    summary = run_training(cfg, overwrite=overwrite)
    print_summary(summary)
    run_dir = Path(summary["run"])

    banner(2, stages, "evaluate on the test set (precision, recall, F1, confusion matrix)")
    metrics = evaluate_run(run_dir, "test", run_dir / "eval.json", show=False)
    console.print(f"test accuracy {metrics['acc']:.4f}, macro F1 {metrics['f1_macro']:.4f}")

    banner(3, stages, f"explain {samples} test predictions (Integrated Gradients, fidelity figures)")
    record = explain_run(run_dir, cfg, cfg.explain)
    print_fidelity(record)

    banner(4, stages, "write the report")
    html_path, _ = build_report(run_dir)
    console.print(f"demo done in {time.perf_counter() - started:.0f}s: test accuracy {metrics['acc']:.4f}")
    console.print(f"report: {html_path}")
