"""The few collective operations the training loop needs; each is a no-op in a single process."""

import torch
import torch.distributed as dist

from behemoth.distributed.env import DistEnv


def all_reduce_sum(values: torch.Tensor, env: DistEnv | None) -> torch.Tensor:
    """Sum a tensor over ranks (in place); the result is the same on every rank."""
    if env is not None and env.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_flag(flag: bool, env: DistEnv | None, src: int = 0) -> bool:
    """Rank `src` decides, every rank gets its decision (e.g. early stopping)."""
    if env is None or not env.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.broadcast(tensor, src=src)
    return bool(tensor.item())


def barrier(env: DistEnv | None) -> None:
    if env is not None and env.distributed:
        dist.barrier()


def gather_rng_states(env: DistEnv | None) -> torch.Tensor:
    """Every rank's torch CPU RNG state, stacked (world_size, state_bytes), so dropout resumes exactly."""
    state = torch.get_rng_state()
    if env is None or not env.distributed:
        return state.unsqueeze(0)
    states = [torch.empty_like(state) for _ in range(env.world_size)]
    dist.all_gather(states, state)
    return torch.stack(states)
