"""The training loop: one file, read top to bottom. Everything optional hooks in through `hooks`.

Exact resume: the data order is a function of (seed, epoch), and a checkpoint holds the model, optimizer,
scheduler, early-stopping state, fp16 loss scale, every rank's RNG states (CPU and CUDA) and the position
(epoch, step in epoch), so a resumed run takes the same steps on the same batches as an uninterrupted one.
Hooks must not draw from the global RNG (they start after it is restored): mfu.py has its own generator.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from behemoth.config import TrainConfig
from behemoth.data.bundle import DataBundle
from behemoth.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    check_divisible,
    gather_rng_states,
    no_gradient_sync,
    parallelize,
)
from behemoth.distributed.collectives import set_rng_states
from behemoth.errors import ConfigError
from behemoth.models.hf_attention import set_training_attention
from behemoth.training.checkpoint import load_checkpoint, save_checkpoint
from behemoth.training.early_stop import EarlyStopping
from behemoth.training.feed import Feed, MicroBatch, TensorFeed
from behemoth.training.hooks import call
from behemoth.training.metrics import evaluate, peak_memory_mb, task_loss
from behemoth.training.optim import optimizer_for
from behemoth.training.precision import (
    autocast,
    check_precision,
    grad_scaler,
    load_scaler_state,
    scaler_state,
)
from behemoth.training.schedules import build_scheduler

# (logits, targets, inputs) -> scalar loss; the default is task_loss with label smoothing. Distillation
# passes one that also asks a teacher about `inputs`.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda': no CUDA device is available")
    return torch.device(name)


@dataclass
class TrainContext:
    """Everything the loop works with; hooks read it. Position fields are what a checkpoint restores."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cfg: TrainConfig
    data: DataBundle
    device: torch.device
    feed: Feed
    loss_fn: LossFn
    run_dir: Path | None
    eval_batch_size: int
    env: DistEnv | None = None  # None or world size 1: a single process
    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps already taken in this epoch
    step: int = 0  # optimizer steps taken in total
    samples_seen: int = 0
    stop_reason: str | None = None
    early_stopping: EarlyStopping | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling; its state is checkpointed

    @property
    def total_steps(self) -> int:
        steps = self.cfg.epochs * self.feed.steps_per_epoch
        return min(steps, self.cfg.max_steps) if self.cfg.max_steps else steps

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


@dataclass
class TrainResult:
    steps: int
    epochs: int  # epochs completed
    stop_reason: str | None  # None: ran to the end
    diverged: bool
    seconds: float
    samples_per_second: float
    peak_memory_mb: float
    last_eval: dict[str, float]


def train(
    model: nn.Module,
    data: DataBundle,
    cfg: TrainConfig,
    batch_size: int,
    eval_batch_size: int = 1000,
    run_dir: Path | None = None,
    hooks: list | None = None,
    resume_from: Path | None = None,
    env: DistEnv | None = None,
    *,
    feed: Feed | None = None,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train `model` on `data.train`, validating on `data.val` each epoch; checkpoint into run_dir.

    With `env` from torchrun, every rank runs this same loop on its shard of each global batch.
    `feed` replaces the default batches (all of data.train, shuffled per epoch) with sampled, augmented
    or streamed ones; `loss_fn` replaces the task loss (e.g. distillation).
    """
    hooks = list(hooks or [])
    device = env.device if env is not None else resolve_device(cfg.device)
    check_precision(cfg.precision, device)
    model.to(device)
    set_training_attention(model, device, data.spec)  # an HF causal LM: the faster kernel for this device
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    check_divisible(batch_size, env)
    feed = feed or TensorFeed(
        data.train, batch_size, cfg.accumulate, cfg.seed, device, env, channels_last=cfg.channels_last
    )
    loss_fn = loss_fn or (lambda logits, y, x: task_loss(logits, y, cfg.label_smoothing))
    step_fn = parallelize(model, cfg, env)  # before the optimizer: FSDP and pipeline change the parameters
    optimizer = optimizer_for(model, cfg)
    ctx = TrainContext(
        model, optimizer, None, cfg, data, device, feed, loss_fn, run_dir, eval_batch_size, env
    )
    ctx.scheduler = build_scheduler(
        optimizer, cfg, cfg.epochs if cfg.schedule_unit == "epoch" else ctx.total_steps
    )
    ctx.early_stopping = EarlyStopping(cfg.early_stop)
    if ctx.early_stopping.enabled and cfg.early_stop.monitor.startswith("val.") and data.val is None:
        raise ConfigError(
            f"train.early_stop.monitor = {cfg.early_stop.monitor!r}: "
            "no validation split (data.val_fraction = 0)"
        )
    ctx.scaler = scaler = grad_scaler(cfg.precision, device)  # before restore: a resume reloads its scale
    if resume_from is not None:
        restore(ctx, resume_from)
    step_fn = torch.compile(step_fn) if cfg.compile else step_fn

    call(hooks, "on_train_start", ctx)
    started, samples_at_start = time.perf_counter(), ctx.samples_seen
    while ctx.epoch < cfg.epochs and ctx.stop_reason is None:
        model.train()
        for step_in_epoch, micro_batches in feed.epoch(ctx.epoch, ctx.step_in_epoch):
            loss, acc, count = train_step(ctx, step_fn, scaler, micro_batches)
            if not math.isfinite(loss):
                ctx.stop_reason = f"non-finite loss ({loss}) at step {ctx.step + 1}, epoch {ctx.epoch + 1}"
                break
            ctx.step, ctx.step_in_epoch = ctx.step + 1, step_in_epoch + 1
            ctx.samples_seen += count
            if cfg.schedule_unit == "step":
                ctx.scheduler.step()
            call(hooks, "on_step_end", ctx, {"train.loss": loss, "train.acc": acc, "lr": ctx.lr})
            if cfg.eval_every_steps and ctx.step % cfg.eval_every_steps == 0:
                validate(ctx, hooks)
            if cfg.checkpoint.every_steps and ctx.step % cfg.checkpoint.every_steps == 0:
                checkpoint(ctx, hooks)
            if cfg.max_steps and ctx.step >= cfg.max_steps:
                ctx.stop_reason = f"reached train.max_steps = {cfg.max_steps}"
                break
        if ctx.stop_reason and ctx.stop_reason.startswith("non-finite"):
            break  # leave the last good checkpoint as it is
        epoch_done = ctx.step_in_epoch >= feed.steps_per_epoch
        if epoch_done:
            ctx.epoch, ctx.step_in_epoch = ctx.epoch + 1, 0
            if cfg.schedule_unit == "epoch":
                ctx.scheduler.step()
        metrics = validate(ctx, hooks)
        stop = ctx.early_stopping.enabled and ctx.early_stopping.update(metrics)
        if broadcast_flag(stop, env) and ctx.stop_reason is None:  # rank 0 decides; all ranks stop together
            ctx.stop_reason = (
                f"early stopping: {cfg.early_stop.monitor} did not improve "
                f"for {cfg.early_stop.patience} evaluations"
            )
        if epoch_done:
            call(hooks, "on_epoch_end", ctx, metrics)
        checkpoint(ctx, hooks)
    seconds = time.perf_counter() - started
    call(hooks, "on_train_end", ctx)
    return TrainResult(
        steps=ctx.step,
        epochs=ctx.epoch,
        stop_reason=ctx.stop_reason,
        diverged=bool(ctx.stop_reason and ctx.stop_reason.startswith("non-finite")),
        seconds=seconds,
        samples_per_second=(ctx.samples_seen - samples_at_start) / max(seconds, 1e-9),
        peak_memory_mb=peak_memory_mb(device),
        last_eval=ctx.last_eval,
    )


def train_step(
    ctx: TrainContext, step_fn: nn.Module, scaler, micro_batches: list[MicroBatch]
) -> tuple[float, float, int]:
    """One optimizer step over `accumulate` micro-batches; returns (mean loss, accuracy, samples)."""
    cfg = ctx.cfg
    ctx.optimizer.zero_grad(set_to_none=True)
    stats = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss sum, correct, predictions, samples
    for i, batch in enumerate(micro_batches):
        with no_gradient_sync(step_fn, last_micro_batch=i == len(micro_batches) - 1):
            with autocast(cfg.precision, ctx.device):
                logits = step_fn(batch.x)
            loss = ctx.loss_fn(logits, batch.y, batch.x)
            # weight each micro-batch by its share of the step so the sum is the mean over the step
            # (DDP then averages the ranks' equal shares: the mean over the global step)
            scaler.scale(loss * batch.weight).backward()
        labels = batch.y.argmax(-1) if batch.y.is_floating_point() else batch.y  # soft targets (mixup)
        stats[0] += loss.detach() * len(batch.y)
        stats[1] += (logits.detach().argmax(-1) == labels).sum()
        stats[2] += labels.numel()
        stats[3] += len(batch.y)
    if cfg.clip_norm or cfg.clip_value:
        scaler.unscale_(ctx.optimizer)
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), cfg.clip_norm)
        if cfg.clip_value:
            torch.nn.utils.clip_grad_value_(ctx.model.parameters(), cfg.clip_value)
    scaler.step(ctx.optimizer)
    scaler.update()
    loss_sum, correct, predictions, samples = all_reduce_sum(
        stats, ctx.env
    ).tolist()  # one reduction per step
    return loss_sum / samples, correct / predictions, int(samples)


def validate(ctx: TrainContext, hooks: list) -> dict[str, float]:
    """Evaluate on the validation split (if any) and tell the hooks."""
    metrics: dict[str, float] = {"epoch": ctx.epoch, "step": ctx.step}
    if ctx.data.val is not None:
        result = evaluate(
            ctx.model,
            ctx.data.val,
            ctx.data.spec,
            ctx.eval_batch_size,
            ctx.cfg.precision,
            ctx.device,
            ctx.cfg.channels_last,
            env=ctx.env,
        )
        metrics.update({f"val.{k}": v for k, v in result.items()})
    ctx.last_eval = metrics
    call(hooks, "on_eval_end", ctx, metrics)
    return metrics


def checkpoint(ctx: TrainContext, hooks: list) -> None:
    """Every rank contributes its RNG state; rank 0 writes (DDP replicas are identical), or every rank writes
    its shards (fsdp, pipeline); then all wait."""
    if ctx.run_dir is None:
        return
    state = {
        "scheduler": ctx.scheduler.state_dict(),
        "early_stopping": ctx.early_stopping.state_dict(),
        "position": {
            "epoch": ctx.epoch,
            "step_in_epoch": ctx.step_in_epoch,
            "step": ctx.step,
            "samples_seen": ctx.samples_seen,
        },
        "stop_reason": ctx.stop_reason or "",
        "rng_per_rank": gather_rng_states(ctx.env, ctx.device),  # CPU, and CUDA when on a GPU
        "grad_scaler": scaler_state(ctx.scaler) if ctx.scaler is not None else {},
    }
    path = save_checkpoint(
        ctx.run_dir, ctx.step, ctx.model, ctx.optimizer, state, ctx.cfg.checkpoint.keep_last, ctx.env
    )
    if ctx.env is None or ctx.env.is_main:
        call(hooks, "on_checkpoint", ctx, path)
    barrier(ctx.env)


def restore(ctx: TrainContext, path: Path) -> None:
    state = load_checkpoint(path, ctx.model, ctx.optimizer, ctx.env)  # weights and optimizer, any strategy
    ctx.scheduler.load_state_dict(state["scheduler"])
    ctx.early_stopping.load_state_dict(state["early_stopping"])
    position = state["position"]
    ctx.epoch, ctx.step_in_epoch = position["epoch"], position["step_in_epoch"]
    ctx.step, ctx.samples_seen = position["step"], position["samples_seen"]
    if not state["stop_reason"].startswith("reached train.max_steps"):  # a larger max_steps may continue
        ctx.stop_reason = state["stop_reason"] or None
    if ctx.scaler is not None:  # "grad_scaler" is absent from checkpoints written before it was kept
        load_scaler_state(ctx.scaler, state.get("grad_scaler"))
    # same world size: each rank's dropout streams continue exactly (else rank 0's, set by load_checkpoint)
    set_rng_states(state["rng_per_rank"], ctx.env, ctx.device)


def result_summary(result: TrainResult) -> dict[str, Any]:
    """What a finished training reports in summary.json, shared by `behemoth train` and `behemoth distill`."""
    return {
        "steps": result.steps,
        "epochs": result.epochs,
        "stop_reason": result.stop_reason,
        "diverged": result.diverged,
        "train_seconds": result.seconds,
        "samples_per_second": result.samples_per_second,
        "peak_memory_mb": result.peak_memory_mb,
        "val": {k[4:]: v for k, v in result.last_eval.items() if k.startswith("val.")},
    }
