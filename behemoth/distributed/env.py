"""The distributed environment, read once (here) from the variables torchrun sets, then passed down."""

import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Who this process is in the group. A plain single process is rank 0 of world size 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    restart_count: int = 0  # > 0: torchrun restarted the group after a failure
    master_addr: str = "localhost"  # torchrun's rendezvous store
    master_port: int = 29500

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def on_device(self, device: str) -> "DistEnv":
        """This rank with the device a config asks for ("auto": this rank's GPU when there is one)."""
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        return replace(
            self, device=torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        )


def read_env() -> DistEnv:
    """RANK, WORLD_SIZE, LOCAL_RANK and TORCHELASTIC_RESTART_COUNT as torchrun sets them (defaults: one
    process)."""
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        master_addr=os.environ.get("MASTER_ADDR", "localhost"),
        master_port=int(os.environ.get("MASTER_PORT", 29500)),
    )


def init_group(env: DistEnv) -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA) when launched with more than one process."""
    if env.distributed and not dist.is_initialized():
        if env.device.type == "cuda":
            torch.cuda.set_device(env.device)
        # Join through a key prefix unique to this restart attempt: with torch 2.13, a group restarted by
        # torchrun (--max-restarts) otherwise reads the previous attempt's gloo addresses from the store and
        # dials the dead worker's old port until it times out.
        store = dist.TCPStore(env.master_addr, env.master_port, is_master=False, use_libuv=True)
        store = dist.PrefixStore(f"behemoth/attempt{env.restart_count}", store)
        dist.init_process_group(env.backend, store=store, rank=env.rank, world_size=env.world_size)


def close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
