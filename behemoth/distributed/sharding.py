"""Split each global (micro-)batch across ranks.

`data.batch_size` is the global batch: each rank takes a contiguous 1/world slice of every micro-batch
of the single-process order, so N processes take the same optimizer steps on the same samples as one
process would (and a run can resume at another world size: the position is world-size free).
"""

import torch

from behemoth.distributed.env import DistEnv
from behemoth.errors import ConfigError


def check_divisible(batch_size: int, env: DistEnv | None) -> None:
    if env is not None and batch_size % env.world_size:
        raise ConfigError(
            f"data.batch_size = {batch_size}: must be divisible by the {env.world_size} processes "
            "(it is the global batch, split evenly across ranks)"
        )


def shard(indices: torch.Tensor, env: DistEnv | None) -> torch.Tensor:
    """This rank's contiguous slice of a global batch's indices."""
    if env is None or not env.distributed:
        return indices
    per_rank = len(indices) // env.world_size
    return indices[env.rank * per_rank : (env.rank + 1) * per_rank]


def shard_rows(count: int, env: DistEnv | None) -> slice:
    """This rank's contiguous share of `count` evaluation rows (the last rank takes the remainder)."""
    if env is None or not env.distributed:
        return slice(0, count)
    per_rank = count // env.world_size
    stop = count if env.rank == env.world_size - 1 else (env.rank + 1) * per_rank
    return slice(env.rank * per_rank, stop)
