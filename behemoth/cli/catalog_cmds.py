"""`behemoth datasets` and `behemoth models`: what is available here."""

from rich.console import Console
from rich.table import Table

from behemoth.cli.app import app
from behemoth.config.federate import STRATEGIES
from behemoth.config.optimizers import OPTIMIZERS
from behemoth.data import list_datasets
from behemoth.models import count_parameters, list_models
from behemoth.pipeline.config import recipe_names

console = Console()


@app.command()
def datasets() -> None:
    """List the built-in datasets, whether each is available offline here, and how to get it if not."""
    table = Table(title="datasets")
    for column in ("name", "available", "description", "note"):
        table.add_column(column)
    for info in list_datasets():
        table.add_row(info.name, "yes" if info.available else "no", info.summary, info.note)
    console.print(table)


@app.command()
def models() -> None:
    """List the model zoo with parameter counts (on each model's example data), and the optimizers and
    federated strategies a config may name."""
    from behemoth.models import build_model

    table = Table(title="models")
    for column in ("name", "parameters", "example data", "description"):
        table.add_column(column)
    for entry in list_models():
        model = build_model(entry.name, {}, entry.example_spec)
        spec = entry.example_spec
        table.add_row(
            entry.name,
            f"{count_parameters(model):,}",
            f"{spec.task} {spec.input_shape} -> {spec.num_classes}",
            entry.summary,
        )
    console.print(table)
    console.print(
        'A Hugging Face model: model.name = "hf", model.path = a local directory (config.json, '
        "*.safetensors, tokenizer.json): causal language models and image classifiers."
    )
    console.print(
        'Your own model: model.name = "package.module:factory" (a function returning an nn.Module; '
        "allow its module with --trust-code)."
    )
    console.print(f"Optimizers (train.optimizer): {', '.join(OPTIMIZERS)}")
    console.print(f"Federated strategies (federate.strategy): {', '.join(STRATEGIES)}")
    console.print(f"Recipes (behemoth train NAME): {', '.join(recipe_names())}")
