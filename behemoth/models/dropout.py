"""Dropout on CPUs from 16 random bits per element.

torch's CPU dropout decides each element with its own draw from the generator (`bernoulli_`: one Mersenne
Twister step per element, on one core): training the gpt-text recipe (dropout 0.1 on 4 attention maps and 9
activations a step) spent a third of a bf16 step there on 2 cores. Here one 64-bit draw decides four
elements: p is rounded to a multiple of 1/65536 and kept values are scaled by the exact inverse of the keep
rate, so the expectation is unchanged. The draws come from torch's default generator, which behemoth seeds
and checkpoints, so runs stay reproducible and resume exactly. On other devices, under torch.compile (inductor
draws its own numbers, fast) and inside `torch_dropout()`, torch's dropout runs.
"""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 65536  # p is rounded to a multiple of 1 / LEVELS: one int16 draw per element
_torch_only = False


@contextlib.contextmanager
def torch_dropout() -> Iterator[None]:
    """Within the block, torch's own dropout runs (e.g. to measure what a CUDA kernel would store)."""
    global _torch_only
    before, _torch_only = _torch_only, True
    try:
        yield
    finally:
        _torch_only = before


def uses_torch_dropout(x: torch.Tensor) -> bool:
    return _torch_only or x.device.type != "cpu" or torch.compiler.is_compiling()


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Zero each element of `x` with probability p (rounded to 1/65536); scale the rest to keep the mean."""
    if not training or p == 0.0:
        return x
    if p >= 1.0 or uses_torch_dropout(x):
        return F.dropout(x, p, training=True)
    dropped = round(p * LEVELS)
    draws = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
    bits = draws.view(torch.int16)[: x.numel()].view(x.shape)  # uniform over [-32768, 32767]
    keep = bits >= dropped - LEVELS // 2
    return x * keep * (LEVELS / (LEVELS - dropped))


class Dropout(nn.Dropout):
    """nn.Dropout (same arguments, same place in a state dict) through `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
