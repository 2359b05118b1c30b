"""The learning-rate range test (Smith 2015; popularised by fastai): train for a few hundred steps
while the learning rate grows exponentially, smooth the loss, and suggest the rate where it falls fastest.

A pure function over a model and data: it trains `model` in place (pass a fresh one) and touches no files.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from behemoth.config import TrainConfig
from behemoth.data.bundle import DataBundle
from behemoth.training import optimizer_for, resolve_device, task_loss
from behemoth.training.batching import StepPlan, iterate_steps


@dataclass
class LrFindResult:
    lrs: list[float]  # learning rate of each step taken
    losses: list[float]  # smoothed (bias-corrected EMA) training loss after each step
    raw_losses: list[float]
    suggestion: float  # steepest descent of the smoothed loss against log(lr)
    min_loss_lr: float  # where the smoothed loss was lowest (a common rule: use a tenth of it)
    stop_reason: str  # "completed" or why the test ended early
    notes: list[str] = field(default_factory=list)


def find_lr(
    model: nn.Module,
    data: DataBundle,
    train_cfg: TrainConfig,
    batch_size: int,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 200,
    smoothing: float = 0.95,
    diverge_factor: float = 4.0,
    on_step: Callable[[int, float, float], None] | None = None,
) -> LrFindResult:
    """Run the range test with the optimizer `train_cfg` names (its lr is replaced by the sweep).

    Stops early when the smoothed loss exceeds `diverge_factor` x its best so far (or is not finite).
    Batches follow train_cfg.seed like training; schedules, accumulation and mixed precision are not
    used: the test asks how the loss answers the learning rate alone.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"learning-rate range needs 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if steps < 10:
        raise ValueError(f"steps = {steps}: the range test needs at least 10 steps")
    device = resolve_device(train_cfg.device)
    model.to(device).train()
    optimizer = optimizer_for(model, train_cfg)
    factor = (end_lr / start_lr) ** (1 / (steps - 1))  # lr_i = start_lr * factor**i
    plan = StepPlan(len(data.train), batch_size, 1)
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    average, best, stop_reason = 0.0, math.inf, "completed"
    for step, idx in _batches(plan, train_cfg.seed, steps):
        lr = start_lr * factor**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.train.x[idx].to(device), data.train.y[idx].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = task_loss(model(x), y, train_cfg.label_smoothing)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            stop_reason = f"loss became {value} at lr {lr:.3g}"
            break
        average = smoothing * average + (1 - smoothing) * value
        current = average / (1 - smoothing ** (step + 1))  # bias correction of the EMA started at 0
        lrs.append(lr), raw.append(value), smoothed.append(current)
        if on_step is not None:
            on_step(step, lr, current)
        best = min(best, current)
        if step > 0 and current > diverge_factor * best:
            stop_reason = f"loss diverged (> {diverge_factor:g}x its minimum) at lr {lr:.3g}"
            break
    suggestion, min_loss_lr, notes = suggest_lr(lrs, smoothed)
    return LrFindResult(lrs, smoothed, raw, suggestion, min_loss_lr, stop_reason, notes)


def _batches(plan: StepPlan, seed: int, steps: int):
    """`steps` single micro-batch index tensors, across as many epochs as needed."""
    step, epoch = 0, 0
    while True:
        for _, micro_batches in iterate_steps(plan, seed, epoch):
            if step == steps:
                return
            yield step, micro_batches[0]
            step += 1
        epoch += 1


def suggest_lr(lrs: list[float], losses: list[float], skip_start: int = 5) -> tuple[float, float, list[str]]:
    """(steepest-descent lr, min-loss lr, notes) from the smoothed curve.

    The steepest point is searched only up to the minimum: past it the loss is rising anyway.
    """
    if not lrs:
        raise ValueError("the range test took no steps (the loss was not finite from the start)")
    lowest = int(np.argmin(losses))
    notes = []
    window = slice(min(skip_start, lowest), lowest + 1)
    if window.stop - window.start < 3:
        notes.append("too few points before the loss minimum: suggesting a tenth of the min-loss lr")
        return lrs[lowest] / 10, lrs[lowest], notes
    # d loss / d log10(lr): the most negative slope is where a step in lr buys the most descent
    slope = np.gradient(np.asarray(losses[window]), np.log10(np.asarray(lrs[window])))
    return lrs[window.start + int(np.argmin(slope))], lrs[lowest], notes


def plot_lr_find(result: LrFindResult, path, title: str = "") -> None:
    """Loss against lr (log axis) with the suggestion and the min-loss point marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.raw_losses, color="0.8", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.losses, color="C0", label="smoothed loss")
    at = int(np.argmin(np.abs(np.log(result.lrs) - math.log(result.suggestion))))  # nearest point taken
    ax.scatter(
        [result.suggestion],
        [result.losses[at]],
        color="C3",
        zorder=3,
        label=f"suggested lr {result.suggestion:.2e}",
    )
    ax.axvline(result.min_loss_lr, color="0.5", linestyle=":", label=f"min loss at {result.min_loss_lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    top = max(result.losses[: result.losses.index(min(result.losses)) + 1] + [result.losses[0]])
    ax.set_ylim(min(result.losses) * 0.9, top * 1.5)  # keep the diverging tail from flattening the curve
    ax.set_title(title or "learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
