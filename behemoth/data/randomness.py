"""Random streams for batches: one generator per (seed, epoch, step, micro-batch, rank), so an augmented
or sampled batch is a pure function of its position, and a resumed run draws the same numbers."""

import zlib

import torch


def step_generator(seed: int, epoch: int, step: int, micro: int, rank: int) -> torch.Generator:
    """An independent generator per (seed, epoch, step, micro-batch, rank) for batch transforms."""
    key = zlib.crc32(f"{seed}/{epoch}/{step}/{micro}/{rank}".encode())
    return torch.Generator().manual_seed(key)
