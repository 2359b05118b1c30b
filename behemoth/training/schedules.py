"""Learning-rate schedules from config, built from torch.optim.lr_scheduler.

A schedule is stepped once per optimizer step (schedule_unit = "step") or once per epoch ("epoch");
`total_units` is the run's length in that unit, needed by cosine and one-cycle.
"""

import torch
from torch.optim import lr_scheduler

from behemoth.config import TrainConfig
from behemoth.errors import ConfigError


def _main_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, units: int
) -> lr_scheduler.LRScheduler:
    if cfg.schedule == "constant":
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if cfg.schedule == "step":  # staircase: lr * gamma ** floor(t / step_size)
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "exponential":  # smooth: lr * gamma ** (t / step_size)
        gamma = cfg.gamma ** (1.0 / cfg.step_size)
        return lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if cfg.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(units, 1), eta_min=cfg.min_lr)
    raise ConfigError(f"train.schedule = {cfg.schedule!r}: unknown schedule")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_units: int
) -> lr_scheduler.LRScheduler:
    """The configured schedule, preceded by `cfg.warmup` units of linear warmup when asked."""
    if cfg.schedule == "onecycle":
        if cfg.warmup:
            raise ConfigError("train.warmup: one-cycle warms up by itself (use train.pct_start)")
        group = optimizer.param_groups[0]
        cycle_momentum = "betas" in group or group.get("momentum", 0.0) > 0
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=cfg.lr,
            total_steps=max(total_units, 2),
            pct_start=cfg.pct_start,
            div_factor=cfg.div_factor,
            final_div_factor=cfg.final_div_factor,
            cycle_momentum=cycle_momentum,
        )
    if cfg.warmup == 0:
        return _main_schedule(optimizer, cfg, total_units)
    if cfg.warmup >= total_units:
        raise ConfigError(
            f"train.warmup = {cfg.warmup}: longer than the run ({total_units} {cfg.schedule_unit}s)"
        )
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (cfg.warmup + 1), total_iters=cfg.warmup)
    main = _main_schedule(optimizer, cfg, total_units - cfg.warmup)
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[cfg.warmup])
