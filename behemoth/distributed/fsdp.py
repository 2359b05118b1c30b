"""FSDP2: shard parameters, gradients and optimizer state across ranks with `fully_shard`.

Applied as torchtitan does: each block first (its parameters are gathered just before it runs and
freed after), then the root (embeddings, head and whatever is left). The model keeps its class and
parameter names; its parameters become DTensors, so the optimizer is built after this runs.
"""

import torch
from torch import nn

from behemoth.distributed.blocks import model_blocks
from behemoth.distributed.env import DistEnv
from behemoth.errors import ConfigError


def mixed_precision(precision: str):
    """bf16: compute in bf16 (parameters cast when gathered), reduce gradients and keep the shards in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: nn.Module, env: DistEnv, precision: str = "fp32", offload: bool = False) -> nn.Module:
    """fully_shard over a 1-D device mesh of all ranks; `offload` keeps the shards in (pinned on CUDA) CPU
    memory."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    offload_policy = CPUOffloadPolicy(pin_memory=env.device.type == "cuda") if offload else OffloadPolicy()
    options = dict(mesh=mesh, mp_policy=mixed_precision(precision), offload_policy=offload_policy)
    blocks = model_blocks(model)
    for i, block in enumerate(blocks):
        # the last block's parameters would be gathered again at once by the root's backward: keep them
        _shard(block, env.world_size, reshard_after_forward=i < len(blocks) - 1, **options)
    _shard(model, env.world_size, **options)
    return model


def _shard(module: nn.Module, world: int, **options) -> None:
    """fully_shard, with a parameter that cannot be split `world` ways as one ConfigError line: a tensor
    subclass asserts it (torchao's NF4 weights, QLoRA's 4-bit base, split only when their scale factors
    do), identically on every rank."""
    from torch.distributed.fsdp import fully_shard

    try:
        fully_shard(module, **options)
    except AssertionError as exc:
        hint = " (a 4-bit QLoRA base: use train.lora.base_bits = 8)" if "quantization" in str(exc) else ""
        raise ConfigError(
            f"train.strategy = 'fsdp': {type(module).__name__}'s parameters cannot be sharded over {world} "
            f"processes: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'assertion failed'}{hint}"
        ) from None


def gradient_sync(module: nn.Module, enabled: bool) -> None:
    """Turn FSDP's gradient reduce-scatter off for the first micro-batches of an accumulated step."""
    module.set_requires_gradient_sync(enabled)
