"""`behemoth plan`: memory per process for each way to train a config, and the fastest way that fits."""

import shlex

import typer
from rich.console import Console
from rich.table import Table

from behemoth import pipeline
from behemoth.cli.app import app, split_config_args
from behemoth.distributed.plan import human

console = Console()


@app.command()
def plan(
    args: list[str] = typer.Argument(
        None, help="CONFIG (a .toml file or a recipe name) followed by overrides like data.batch_size=64"
    ),
    memory: str = typer.Option(..., "--memory", help="Device memory per process, e.g. 16GiB, 80GB, 512MiB."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (one per GPU) the run would use."),
    device: str = typer.Option(
        None,
        "--device",
        help="cuda or cpu: which kernels and optimizer temporaries to "
        "assume (default: train.device, or cuda when it is auto).",
    ),
) -> None:
    """Print, per process, parameters, gradients, optimizer state, activations and the peak for single / ddp /
    fsdp / fsdp+offload, with and without activation checkpointing, and recommend the fastest option that
    fits (allowing more gradient accumulation).

    Activations are measured from a real forward pass of the model on CPU (1 and 2 samples, extrapolated),
    so the model's parameters must fit in this machine's memory once.
    """
    config_arg, overrides = split_config_args(args or [])
    cfg = pipeline.load_config(config_arg or "mnist-cnn", overrides)
    result = pipeline.plan(cfg, memory, nproc, device)
    if isinstance(result, pipeline.FinetunePlan):
        print_finetune_plan(result)
        return
    print_plan(result.rows, result.budget, result.title)
    if result.best is None:
        console.print(
            f"nothing fits in {human(result.budget)} per process; the least is {human(result.least.peak)} "
            f"({result.least.label}): add processes, shorten sequences or shrink the model"
        )
        raise typer.Exit(1)
    console.print(
        f"recommended: {result.best.label} -- {human(result.best.peak)} of {human(result.budget)} per process"
    )
    console.print(
        "  behemoth train CONFIG " + " ".join(result.overrides) + (f" --nproc {nproc}" if nproc > 1 else "")
    )


def print_plan(rows: list, budget: int, title: str) -> None:
    unit, scale = ("GiB", 2**30) if budget >= 2**30 else ("MiB", 2**20)
    table = Table(title=f"{title}\nper process, in {unit} (ac: activation checkpointing)")
    for column in ("strategy", "samples", "params", "grads", "optim", "activ", "peak", "host", "fits"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in rows:
        sizes = [
            f"{value / scale:.2f}"
            for value in (row.params, row.grads, row.optimizer, row.activations, row.peak)
        ]
        table.add_row(
            row.label,
            str(row.micro_batch),
            *sizes,
            f"{row.host / scale:.2f}" if row.host else "-",
            "yes" if row.peak <= budget else "no",
        )
    console.print(table)


def print_finetune_plan(result: "pipeline.FinetunePlan") -> None:
    """An hf model's plan: one row per way to fine-tune it, and the first (least lossy) that fits."""
    unit, scale = ("GiB", 2**30) if result.budget >= 2**30 else ("MiB", 2**20)
    table = Table(title=f"{result.title}\none process, in {unit} (activations: an estimate)")
    for column in ("mode", "trainable", "weights", "grads", "optim", "activ", "total", "fits"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in result.rows:
        sizes = [
            f"{v / scale:.2f}" for v in (row.weights, row.grads, row.optimizer, row.activations, row.total)
        ]
        table.add_row(row.mode, f"{row.trainable:,}", *sizes, "yes" if row.total <= result.budget else "no")
    console.print(table)
    if result.best is None:
        least = min(result.rows, key=lambda r: r.total)
        console.print(
            f"nothing fits in {human(result.budget)}; the least is {human(least.total)} ({least.mode}): "
            "shorten sequences, lower data.batch_size or add memory"
        )
        raise typer.Exit(1)
    console.print(f"recommended: {result.best.mode} -- {human(result.best.total)} of {human(result.budget)}")
    how = " ".join(map(shlex.quote, result.overrides)) if result.overrides else "(without [train.lora])"
    console.print(f"  behemoth train CONFIG {how}")
