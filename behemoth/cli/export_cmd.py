"""`behemoth export`: one consolidated safetensors file from a run's checkpoint, whatever wrote it."""

from pathlib import Path

import typer
from rich.console import Console

from behemoth import pipeline
from behemoth.cli.app import app

console = Console()


@app.command()
def export(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/gpt-text."),
    out: Path = typer.Option(
        None, "--out", help="The file to write (default: <run>/export/model.safetensors)."
    ),
    step: int = typer.Option(None, "--step", min=0, help="Export checkpoint step N (default: the latest)."),
    hf: Path = typer.Option(
        None,
        "--hf",
        help="Write a Hugging Face directory here instead (config.json, model.safetensors, tokenizer.json) "
        "that transformers' AutoModel and AutoTokenizer load: gpt runs as GPT-2, hf runs as themselves.",
    ),
    merge: bool = typer.Option(
        False,
        "--merge",
        help="With --hf: fold a LoRA run's adapters into the weights (peft's merge_and_unload).",
    ),
) -> None:
    """Write the weights of a run's checkpoint as ONE safetensors file: from a single-process or DDP checkpoint,
    or from the shards of every rank of an FSDP or pipeline run (torch.distributed.checkpoint), in one process.

    The tensors are checked against the run's model (names and shapes) before anything is written.
    """  # noqa: E501 - Typer's command list (behemoth --help) keeps the summary's line breaks as written
    if hf is not None:
        if out is not None:
            raise typer.BadParameter("give --out or --hf, not both", param_hint="--out")
        made = pipeline.export(run, step=step, hf=hf, merge=merge)
        tokenizer = f", {made.tokenizer} tokenizer" if made.tokenizer else ""
        console.print(f"written {made.path}: {made.architecture}, {made.parameters:,} parameters{tokenizer}")
        return
    done = pipeline.export(run, out, step, merge=merge)
    console.print(
        f"written {done.path}: {done.tensors} tensors, {done.values:,} values, from {done.checkpoint}"
        f" ({'sharded' if done.sharded else 'single file'})"
    )
