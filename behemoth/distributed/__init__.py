"""torch.distributed for behemoth: the environment (read once), strategies, sharding, launching via torchrun."""

from behemoth.distributed.collectives import all_reduce_sum, barrier, broadcast_flag, gather_rng_states
from behemoth.distributed.env import DistEnv, close_group, init_group, read_env
from behemoth.distributed.parallelize import no_gradient_sync, parallelize, resolve_strategy
from behemoth.distributed.sharding import check_divisible, shard, shard_rows

__all__ = [
    "DistEnv", "all_reduce_sum", "barrier", "broadcast_flag", "check_divisible", "close_group",
    "gather_rng_states", "init_group", "no_gradient_sync", "parallelize", "read_env", "resolve_strategy",
    "shard", "shard_rows",
]
