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
    # on the group's device: NCCL moves CUDA tensors only, gloo CPU ones
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=env.device)
    dist.broadcast(tensor, src=src)
    return bool(tensor.item())


def barrier(env: DistEnv | None) -> None:
    if env is not None and env.distributed:
        dist.barrier()


# A checkpoint's RNG states: {"cpu": (world_size, bytes), "cuda": (world_size, bytes) when on CUDA}, uint8.
RngStates = dict[str, torch.Tensor]


def _all_gather_rows(state: torch.Tensor, env: DistEnv | None) -> torch.Tensor:
    """(world_size, *state.shape) on the CPU: every rank's `state`, in rank order."""
    if env is None or not env.distributed:
        return state.unsqueeze(0)
    local = state.to(env.device)  # the group's backend decides: NCCL moves CUDA tensors only, gloo CPU ones
    parts = [torch.empty_like(local) for _ in range(env.world_size)]
    dist.all_gather(parts, local)
    return torch.stack(parts).cpu()


def gather_rng_states(env: DistEnv | None, device: torch.device | None = None) -> RngStates:
    """Every rank's torch CPU RNG state, and its CUDA one when `device` is a GPU, so dropout resumes exactly.

    Per rank, not rank 0's for all: DDP ranks draw different dropout masks, each from its own streams.
    """
    states = {"cpu": _all_gather_rows(torch.get_rng_state(), env)}
    if device is not None and device.type == "cuda":
        states["cuda"] = _all_gather_rows(torch.cuda.get_rng_state(device), env)
    return states


def set_rng_states(states: RngStates | torch.Tensor, env: DistEnv | None, device: torch.device) -> bool:
    """Give this rank back its own streams from `gather_rng_states`; False (nothing set) when the states
    come from another world size. A bare tensor is the CPU states of a checkpoint written before CUDA
    states were kept."""
    states = {"cpu": states} if isinstance(states, torch.Tensor) else states
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    if len(states["cpu"]) != world:
        return False
    # clone: torch.set_rng_state ignores a view's storage offset and reads past the tensor (segfault)
    torch.set_rng_state(states["cpu"][rank].clone())
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"][rank].clone(), device)
    return True


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
