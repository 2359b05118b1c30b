"""Apply a parallel strategy over a plain model (the model never knows how it is distributed).

torchtitan's order: cut the pipeline stage, checkpoint activations per block, then replicate (DDP) or
shard (FSDP2). FSDP and pipeline replace or drop parameters, so the optimizer is built after this runs.
"""

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from behemoth.config import TrainConfig
from behemoth.distributed.env import DistEnv
from behemoth.errors import ConfigError

SHARDED = ("fsdp", "pipeline")  # strategies whose ranks each hold part of the model: sharded checkpoints


def resolve_strategy(strategy: str, env: DistEnv | None) -> str:
    """The strategy this run uses: 'auto' picks ddp under torchrun; one process always trains as 'single'."""
    world = env.world_size if env is not None else 1
    if strategy == "single" and world > 1:
        raise ConfigError(
            f"train.strategy = 'single': launched with {world} processes (use 'ddp', 'fsdp', "
            "'pipeline' or 'auto')"
        )
    if world == 1:
        return "single"  # nothing to replicate, shard or split: the same run, and its checkpoints, as single
    return "ddp" if strategy == "auto" else strategy


def check_strategy(strategy: str, cfg: TrainConfig) -> None:
    """Options that a strategy cannot honour fail here, before any work, naming the field."""
    if strategy in SHARDED and cfg.precision == "fp16":
        raise ConfigError(
            f"train.precision = 'fp16': not with train.strategy = {strategy!r} (a grad scaler per "
            "shard would skip steps on some ranks only); use 'bf16'"
        )
    if strategy == "pipeline" and cfg.compile:
        raise ConfigError("train.compile = true: not with train.strategy = 'pipeline'")
    if cfg.fsdp_offload and cfg.strategy != "fsdp":
        raise ConfigError(f"train.fsdp_offload = true: needs train.strategy = 'fsdp' (not {cfg.strategy!r})")


def parallelize(model: nn.Module, cfg: TrainConfig, env: DistEnv | None) -> nn.Module:
    """Prepare `model` in place for this rank; return the module the train step calls."""
    strategy = resolve_strategy(cfg.strategy, env)
    check_strategy(strategy, cfg)
    if strategy == "pipeline":
        from behemoth.distributed.pipeline import pipeline_model

        pipeline_model(model, env, cfg.pipeline_microbatches, cfg.pipeline_schedule, cfg.clip_norm)
    if cfg.activation_checkpointing:
        from behemoth.distributed.checkpointing import checkpoint_blocks

        checkpoint_blocks(model)
    if strategy == "fsdp":
        from behemoth.distributed.fsdp import shard_model

        return shard_model(model, env, cfg.precision, cfg.fsdp_offload)
    if strategy == "ddp":
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    return model


def holds_shard(model: nn.Module) -> bool:
    """True when this rank holds only part of the model (FSDP shards, a pipeline stage)."""
    return hasattr(model, "set_requires_gradient_sync") or hasattr(model, "_pipeline")


@contextlib.contextmanager
def _gradient_sync_off(module: nn.Module) -> Iterator[None]:
    module.set_requires_gradient_sync(False)  # FSDP2: keep this micro-batch's gradients unreduced
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


@contextlib.contextmanager
def _tied_sync_off(runner) -> Iterator[None]:
    runner.last_micro_batch = False  # pipeline: tied gradients summed (and clipped) once, on the last one
    try:
        yield
    finally:
        runner.last_micro_batch = True


def no_gradient_sync(step_module: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient reduction on all but the last micro-batch of an accumulated step."""
    if last_micro_batch:
        return contextlib.nullcontext()
    if isinstance(step_module, DistributedDataParallel):
        return step_module.no_sync()
    if hasattr(step_module, "set_requires_gradient_sync"):  # an FSDPModule (not imported: it loads slowly)
        return _gradient_sync_off(step_module)
    if hasattr(step_module, "_pipeline"):
        return _tied_sync_off(step_module._pipeline)
    return contextlib.nullcontext()
