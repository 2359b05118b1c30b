"""`behemoth generate`: sample text from a trained language-model run, decoded with the run's own
tokenizer."""

import sys
from pathlib import Path

import typer

from behemoth import pipeline
from behemoth.cli.app import app


@app.command()
def generate(
    run: Path = typer.Argument(..., help="A language-model run directory, e.g. runs/gpt-text."),
    prompt: str = typer.Option(
        "\n",
        "--prompt",
        show_default=False,
        help="Text to continue (default: a newline, i.e. the start of a fresh line).",
    ),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", min=1, help="How many tokens to sample."),
    temperature: float = typer.Option(
        0.8,
        "--temperature",
        min=0.0,
        help="Below 1 sharpens the distribution, above 1 flattens it; 0 is greedy.",
    ),
    top_k: int = typer.Option(None, "--top-k", min=1, help="Sample among the k likeliest tokens only."),
    seed: int = typer.Option(None, "--seed", help="Seed the sampler: the same seed gives the same text."),
    stream: bool = typer.Option(False, "--stream", help="Print each token as it is generated."),
    packed: Path = typer.Option(
        None,
        "--packed",
        help="Generate from this .bhm of the run (e.g. int4 weights by behemoth compress).",
    ),
    compile_step: bool = typer.Option(
        False,
        "--compile",
        help="Decode through a torch.compile'd step (inductor, frozen weights): 1.7-2.5x the tokens/s of "
        "an int8 model on a CPU (bench/generate.py), after a compile of seconds (small models) to about a "
        "minute (1B); pays off on long texts.",
    ),
) -> None:
    """Continue a prompt with a trained language model (gpt, rnn) and print the text.

    The model reads at most data.block_size tokens of context (what it was trained on); the prompt is
    encoded and the output decoded with the run's tokenizer (bytes, or its tokenizer.json for BPE).
    A GPT decodes with a KV cache: the prompt is read once, then one token per step; a Hugging Face causal
    LM (model.name = "hf") with transformers' generate and its own cache.
    """
    args = (run, prompt, max_new_tokens, temperature, top_k, seed, packed, compile_step)
    if not stream:
        typer.echo(pipeline.generate(*args))
        return
    for piece in pipeline.generate_stream(*args):
        typer.echo(piece, nl=False)
        sys.stdout.flush()
    typer.echo("")
