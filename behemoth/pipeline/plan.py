"""`behemoth.plan(cfg, memory)`: memory per process for each way to train a config, and the fastest that
fits."""

import contextlib
from dataclasses import dataclass
from typing import Any

from behemoth.config import RunConfig, parse_size
from behemoth.errors import ConfigError


@dataclass
class Plan:
    rows: list[Any]  # behemoth.distributed.plan.Estimate per strategy option
    best: Any | None  # the fastest option that fits, or None
    least: Any  # the option with the smallest peak (what to say when nothing fits)
    budget: int  # bytes per process
    device: str
    title: str
    overrides: list[str]  # how to train as `best` says


def plan(cfg: RunConfig, memory: str, nproc: int = 1, device: str | None = None) -> Plan:
    """Parameters, gradients, optimizer state, activations and the peak per process for single / ddp / fsdp /
    fsdp+offload, with and without activation checkpointing; activations from a real forward pass on CPU."""
    import torch

    from behemoth.distributed.plan import (
        estimate,
        example_batch,
        fused_attention,
        human,
        measure_model,
        optimizer_bytes,
        overrides_for,
    )
    from behemoth.distributed.plan import plan as make_plan
    from behemoth.training.assembly import prepare
    from behemoth.training.metrics import task_loss
    from behemoth.training.precision import autocast

    try:
        budget = parse_size(memory)
    except ValueError as exc:
        raise ConfigError(f"--memory {exc}") from None
    target = device or (cfg.train.device if cfg.train.device != "auto" else "cuda")
    if target not in ("cuda", "cpu"):
        raise ConfigError(f"--device {target!r}: use cuda or cpu")
    batch = cfg.data.batch_size
    if batch % nproc:
        raise ConfigError(
            f"data.batch_size = {batch}: must be divisible by --nproc {nproc} (it is the global batch)"
        )
    data, model = prepare(cfg)
    precision = "bf16" if cfg.train.precision != "fp32" else "fp32"  # fp16 and bf16 take the same bytes

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(logits, y, cfg.train.label_smoothing)

    fused = fused_attention() if target == "cuda" else contextlib.nullcontext()
    with autocast(precision, torch.device("cpu")), fused:
        facts = measure_model(model, example_batch(data.spec.task, data.spec.input_shape), loss_fn)
    opt = optimizer_bytes(
        facts, cfg.train.optimizer, momentum=cfg.train.momentum, centered=cfg.train.centered
    )
    rows, best = make_plan(facts, nproc, batch, opt, budget, target)
    least = min(
        (
            estimate(facts, r.strategy, nproc, batch, opt, r.checkpointing, batch // nproc, target)
            for r in rows
        ),
        key=lambda e: e.peak,
    )
    title = (
        f"{cfg.model.name} on {data.name}, {nproc} x {human(budget)} ({target}), global micro-batch {batch}, "
        f"{cfg.train.optimizer}"
    )
    steps = overrides_for(best, batch, cfg.train.accumulate) if best is not None else []
    return Plan(rows, best, least, budget, target, title, steps)
