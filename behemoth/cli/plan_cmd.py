"""`behemoth plan`: memory per process for each way to train a config, and the fastest way that fits."""

import contextlib

import typer
from rich.console import Console
from rich.table import Table

from behemoth.cli.app import app, resolve_config, split_config_args
from behemoth.config import load_config
from behemoth.errors import ConfigError

console = Console()


@app.command()
def plan(
    args: list[str] = typer.Argument(None, help="CONFIG (a .toml file or a recipe name) followed by overrides "
                                     "like data.batch_size=64"),
    memory: str = typer.Option(..., "--memory", help="Device memory per process, e.g. 16GiB, 80GB, 512MiB."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (one per GPU) the run would use."),
    device: str = typer.Option(None, "--device", help="cuda or cpu: which kernels and optimizer temporaries to "
                               "assume (default: train.device, or cuda when it is auto)."),
) -> None:
    """Print, per process, parameters, gradients, optimizer state, activations and the peak for single / ddp /
    fsdp / fsdp+offload, with and without activation checkpointing, and recommend the fastest option that
    fits (allowing more gradient accumulation).

    Activations are measured from a real forward pass of the model on CPU (1 and 2 samples, extrapolated),
    so the model's parameters must fit in this machine's memory once.
    """
    import torch

    from behemoth.distributed.plan import (
        estimate, example_batch, fused_attention, human, measure_model, optimizer_bytes, overrides_for, parse_size,
    )
    from behemoth.distributed.plan import plan as make_plan
    from behemoth.pipeline import prepare
    from behemoth.training.metrics import task_loss
    from behemoth.training.precision import autocast

    config_arg, overrides = split_config_args(args or [])
    cfg = load_config(resolve_config(config_arg or "mnist-cnn"), overrides)
    try:
        budget = parse_size(memory)
    except ValueError as exc:
        raise ConfigError(f"--memory {exc}") from None
    target = device or (cfg.train.device if cfg.train.device != "auto" else "cuda")
    if target not in ("cuda", "cpu"):
        raise ConfigError(f"--device {target!r}: use cuda or cpu")
    batch = cfg.data.batch_size
    if batch % nproc:
        raise ConfigError(f"data.batch_size = {batch}: must be divisible by --nproc {nproc} (it is the global batch)")
    data, model = prepare(cfg)
    precision = "bf16" if cfg.train.precision != "fp32" else "fp32"  # fp16 and bf16 take the same bytes

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(logits, y, cfg.train.label_smoothing)

    fused = fused_attention() if target == "cuda" else contextlib.nullcontext()
    with autocast(precision, torch.device("cpu")), fused:
        facts = measure_model(model, example_batch(data.spec.task, data.spec.input_shape), loss_fn)
    opt = optimizer_bytes(facts, cfg.train.optimizer, momentum=cfg.train.momentum, centered=cfg.train.centered)
    rows, best = make_plan(facts, nproc, batch, opt, budget, target)
    print_plan(rows, budget, f"{cfg.model.name} on {data.name}, {nproc} x {human(budget)} ({target}), global "
               f"micro-batch {batch}, {cfg.train.optimizer}")
    if best is None:
        least = min((estimate(facts, r.strategy, nproc, batch, opt, r.checkpointing, batch // nproc, target)
                     for r in rows), key=lambda e: e.peak)
        console.print(f"nothing fits in {human(budget)} per process; the least is {human(least.peak)} "
                      f"({least.label}): add processes, shorten sequences or shrink the model")
        raise typer.Exit(1)
    console.print(f"recommended: {best.label} -- {human(best.peak)} of {human(budget)} per process")
    console.print("  behemoth train CONFIG " + " ".join(overrides_for(best, batch, cfg.train.accumulate))
                  + (f" --nproc {nproc}" if nproc > 1 else ""))


def print_plan(rows: list, budget: int, title: str) -> None:
    unit, scale = ("GiB", 2**30) if budget >= 2**30 else ("MiB", 2**20)
    table = Table(title=f"{title}\nper process, in {unit} (ac: activation checkpointing)")
    for column in ("strategy", "samples", "params", "grads", "optim", "activ", "peak", "host", "fits"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in rows:
        sizes = [f"{value / scale:.2f}" for value in (row.params, row.grads, row.optimizer, row.activations, row.peak)]
        table.add_row(row.label, str(row.micro_batch), *sizes, f"{row.host / scale:.2f}" if row.host else "-",
                      "yes" if row.peak <= budget else "no")
    console.print(table)
