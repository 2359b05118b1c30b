"""The few collective operations the training loop needs (each a no-op in a single process), and the row
gather/scatter that moves a pipeline's inputs and outputs between the loop's ranks."""

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


def _row_counts(rows: int, env: DistEnv) -> list[int]:
    count = torch.tensor([rows], dtype=torch.int64, device=env.device)
    counts = [torch.empty_like(count) for _ in range(env.world_size)]
    dist.all_gather(counts, count)
    return [int(c.item()) for c in counts]


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    pad = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, pad])


def gather_rows(tensor: torch.Tensor, env: DistEnv, dst: int) -> tuple[torch.Tensor | None, list[int]]:
    """Every rank's rows concatenated in rank order on rank `dst` (None elsewhere), and each rank's row count.

    Ranks may hold different numbers of rows (evaluation shards): they are padded to the largest for the
    collective and trimmed after.
    """
    counts = _row_counts(tensor.shape[0], env)
    padded = _padded(tensor, max(counts))
    parts = [torch.empty_like(padded) for _ in counts] if env.rank == dst else None
    dist.gather(padded, parts, dst=dst)
    if parts is None:
        return None, counts
    return torch.cat([part[:count] for part, count in zip(parts, counts)]), counts


def scatter_rows(
    full: torch.Tensor | None,
    counts: list[int],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    env: DistEnv,
    src: int,
) -> torch.Tensor:
    """Rank `src` holds all rows (sum(counts), *shape); each rank gets back its own `counts[rank]` rows."""
    rows = max(counts)
    out = torch.empty((rows, *shape), dtype=dtype, device=env.device)
    parts = None
    if env.rank == src:
        parts = [_padded(part, rows) for part in full.to(dtype).split(counts)]
    dist.scatter(out, parts, src=src)
    return out[: counts[env.rank]]
