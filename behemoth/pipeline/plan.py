"""`behemoth.plan(cfg, memory)`: memory per process for each way to train a config, and the fastest that
fits."""

import contextlib
import json
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


@dataclass
class FinetunePlan:
    """`behemoth plan` of an hf model: full fine-tuning, LoRA and QLoRA side by side."""

    rows: list[Any]  # behemoth.training.finetune_plan.FinetuneRow per mode
    best: Any | None  # the first mode that fits, in the order full, lora, qlora-8bit, qlora-4bit
    parameters: int
    budget: int
    device: str
    title: str
    overrides: list[str]  # how to train as `best` says


def plan(cfg: RunConfig, memory: str, nproc: int = 1, device: str | None = None) -> "Plan | FinetunePlan":
    """Parameters, gradients, optimizer state, activations and the peak per process for single / ddp / fsdp /
    fsdp+offload, with and without activation checkpointing; activations from a real forward pass on CPU.
    An hf model (model.name = "hf") gets a FinetunePlan instead, from its config.json alone."""
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
    from behemoth.models.dropout import torch_dropout
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
    if cfg.model.name == "hf":
        return plan_finetuning(cfg, budget, target, nproc)
    batch = cfg.data.batch_size
    if batch % nproc:
        raise ConfigError(
            f"data.batch_size = {batch}: must be divisible by --nproc {nproc} (it is the global batch)"
        )
    data, model = prepare(cfg)
    precision = "bf16" if cfg.train.precision != "fp32" else "fp32"  # fp16 and bf16 take the same bytes

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(logits, y, cfg.train.label_smoothing)

    as_on_target = contextlib.ExitStack()
    if target == "cuda":  # CUDA's fused attention; torch's dropout, not behemoth's written-out CPU attention
        as_on_target.enter_context(fused_attention())
        as_on_target.enter_context(torch_dropout())
    with autocast(precision, torch.device("cpu")), as_on_target:
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


def plan_finetuning(cfg: RunConfig, budget: int, device: str, nproc: int = 1) -> FinetunePlan:
    """Weights, gradients, optimizer state and activations of one process fine-tuning an hf causal LM in
    full, with LoRA and with QLoRA (8- and 4-bit base), the model built on meta from config.json. More
    processes are not planned (the title says so rather than passing one process's bytes off as theirs)."""
    from behemoth.config.optimizers import optimizer_entry
    from behemoth.distributed.plan import human
    from behemoth.models.hf import build_hf_on_meta, read_hf_config
    from behemoth.training.finetune_plan import finetune_rows, shape_of

    path = cfg.model.options["path"]
    config = read_hf_config(path)
    lora = cfg.train.lora
    targets = lora.target_modules if lora is not None else None
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        targets = list(DEFAULTS.get(str(config.get("model_type")), []))
        if not targets:
            raise ConfigError(
                f"train.lora.target_modules: peft has no default for model_type "
                f"{config.get('model_type')!r}; name the layers to adapt"
            )
    rank = lora.r if lora is not None else 8
    shape = shape_of(build_hf_on_meta(path), targets, config)
    element = 2 if cfg.train.param_dtype == "bf16" else 4
    compute = 4 if cfg.train.precision == "fp32" and element == 4 else 2
    entry = optimizer_entry(cfg.train.optimizer)
    slots = entry.state_slots(momentum=cfg.train.momentum, centered=cfg.train.centered)
    tokens = cfg.data.batch_size * cfg.data.block_size
    rows = finetune_rows(shape, rank, tokens, element, compute, slots, entry.bytes_per_value)
    best = next((row for row in rows if row.total <= budget), None)
    steps = {
        "full": [],  # without [train.lora]
        "lora": [f"train.lora.r={rank}", f"train.lora.target_modules={json.dumps(targets)}"],
        "qlora-8bit": [f"train.lora.r={rank}", "train.lora.base_bits=8"],
        "qlora-4bit": [f"train.lora.r={rank}", "train.lora.base_bits=4"],
    }
    title = (
        f"hf {config.get('model_type')} ({shape.params / 1e9:.2f}B parameters) fine-tuned in {human(budget)} "
        f"({device}), batch {cfg.data.batch_size} x {cfg.data.block_size} tokens, {cfg.train.optimizer}, "
        f"LoRA r={rank} on {targets}"
        + (
            f"; --nproc {nproc} is not planned for hf models: one process's bytes (train.strategy = 'fsdp' "
            f"would divide weights, gradients and optimizer state by {nproc})"
            if nproc > 1
            else ""
        )
    )
    return FinetunePlan(rows, best, shape.params, budget, device, title, steps[best.mode] if best else [])
