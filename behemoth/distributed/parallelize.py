"""Apply a parallel strategy over a plain model (the model never knows how it is distributed)."""

import contextlib
from typing import ContextManager

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from behemoth.distributed.env import DistEnv
from behemoth.errors import ConfigError


def resolve_strategy(strategy: str, env: DistEnv | None) -> str:
    world = env.world_size if env is not None else 1
    if strategy == "auto":
        return "ddp" if world > 1 else "single"
    if strategy == "single" and world > 1:
        raise ConfigError(f"train.strategy = 'single': launched with {world} processes (use 'ddp' or 'auto')")
    return strategy


def parallelize(model: nn.Module, strategy: str, env: DistEnv | None) -> nn.Module:
    """The module the train step calls: the model itself, or a DDP wrapper that averages gradients."""
    if resolve_strategy(strategy, env) == "ddp" and env is not None and env.distributed:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    return model


def no_gradient_sync(step_module: nn.Module, last_micro_batch: bool) -> ContextManager:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if isinstance(step_module, DistributedDataParallel) and not last_micro_batch:
        return step_module.no_sync()
    return contextlib.nullcontext()
