"""`behemoth demo`: the main job on the built-in default (MNIST): train -> evaluate -> compress -> explain ->
a short federated run -> one HTML report. `behemoth demo --lm`: a language model's life instead (KJV GPT ->
Hugging Face export -> LoRA on Python's docs -> int4 -> generations -> token attributions -> report).

Each stage runs through the same functions as its own command, so the demo is also a smoke test of the
whole chain; it prints where the report is. Its runs live in runs/demo (the federated one in
runs/demo/federated, where the report finds it).
"""

from pathlib import Path

import typer
from rich.console import Console

from behemoth.cli.app import app
from behemoth.cli.printing import (
    print_federated,
    print_fidelity,
    print_generation_attributions,
    print_table,
    print_training,
)

console = Console()


def banner(step: int, total: int, text: str) -> None:
    console.rule(f"[bold]demo {step}/{total}: {text}")


@app.command()
def demo(
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/demo if it exists."),
    runs_dir: str = typer.Option("runs", help="Where to put the demo run."),
    samples: int = typer.Option(8, min=1, help="Test images to explain."),
    federated: bool = typer.Option(
        True, "--federated/--no-federated", help="Include the short federated run (Flower simulation on Ray)."
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="The same chain on 12,000 training images, two epochs and "
        "one federated round: under a minute, for checking an install (accuracy ~98%). With --lm: a few "
        "steps per stage (the text is noise).",
    ),
    lm: bool = typer.Option(
        False,
        "--lm",
        help="The language-model chain instead, in runs/demo-lm: train behemoth's GPT on the KJV, export it "
        "as a Hugging Face GPT-2, LoRA fine-tune that on Python's documentation (python-docs), pack it to "
        "int4, sample from every stage, attribute one continuation, write the report (a few minutes).",
    ),
    prompt: str = typer.Option(None, "--prompt", help="With --lm: the text every stage continues."),
) -> None:
    """The whole chain on MNIST: train the default CNN, evaluate it, compress it (pruning, int8, zstd: a .bhm
    file measured from disk), explain it (Integrated Gradients with fidelity figures), train the same CNN
    federated over 10 private silos (Flower), and write one HTML report. Prints test accuracy and the report's
    path. With --lm, the language-model chain (see --lm)."""
    if lm:
        demo_language_model(runs_dir, quick, overwrite, prompt)
        return
    if prompt is not None:
        raise typer.BadParameter("goes with --lm (the MNIST demo has no text)", param_hint="--prompt")
    from behemoth.pipeline.demo import demo as run_demo

    def show(kind: str, result) -> None:
        if kind == "train":
            print_training(result)
        elif kind == "evaluate":
            console.print(f"test accuracy {result['acc']:.4f}, macro F1 {result['f1_macro']:.4f}")
        elif kind == "compress":
            print_table(result.rows, "demo")
        elif kind == "explain":
            print_fidelity(result)
        elif kind == "federate":
            print_federated(Path(result["run"]))
        else:
            console.print(result)

    done = run_demo(runs_dir, samples, federated, quick, overwrite, on_stage=banner, on_result=show)
    console.print(f"demo done in {done['seconds']:.0f}s: test accuracy {done['test']['acc']:.4f}")
    console.print(f"report: {done['report']}")


def demo_language_model(runs_dir: str, quick: bool, overwrite: bool, prompt: str | None) -> None:
    from behemoth.pipeline.demo_lm import PROMPT, demo_lm

    def show(kind: str, result) -> None:
        if kind == "train":
            print_training(result)
        elif kind == "sample":
            console.print(f"[bold]{result['stage']}[/bold]", highlight=False)
            console.print(result["text"], markup=False, highlight=False)
        elif kind == "export":
            exported = result["export"]
            console.print(f"{exported.path}: {exported.architecture}, {exported.parameters:,} parameters")
            same = "yes" if result["greedy_equal"] else "NO"
            console.print(f"transformers' greedy text equals behemoth's: {same}", highlight=False)
        elif kind == "compress":
            print_table(result.rows, "demo-lm")
        elif kind == "explain":
            print_generation_attributions(result)

    done = demo_lm(runs_dir, prompt or PROMPT, quick, overwrite, on_stage=banner, on_result=show)
    console.print(f"demo --lm done in {done['seconds']:.0f}s")
    console.print(f"report: {done['report']}")
