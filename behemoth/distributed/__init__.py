"""torch.distributed for behemoth: the environment (read once), strategies (ddp, fsdp, pipeline, activation
checkpointing: parallelize.py), data sharding, sharded checkpoints (dcp.py), the memory plan (plan.py) and
launching via torchrun. FSDP, pipelining and DCP are imported only when used: they load slowly."""

from behemoth.distributed.collectives import all_reduce_sum, barrier, broadcast_flag, gather_rng_states
from behemoth.distributed.env import DistEnv, close_group, init_group, read_env
from behemoth.distributed.parallelize import (
    SHARDED,
    holds_shard,
    no_gradient_sync,
    parallelize,
    resolve_strategy,
)
from behemoth.distributed.sharding import check_divisible, shard, shard_rows

__all__ = [
    "SHARDED",
    "DistEnv",
    "all_reduce_sum",
    "barrier",
    "broadcast_flag",
    "check_divisible",
    "close_group",
    "gather_rng_states",
    "holds_shard",
    "init_group",
    "no_gradient_sync",
    "parallelize",
    "read_env",
    "resolve_strategy",
    "shard",
    "shard_rows",
]
