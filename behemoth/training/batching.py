"""Batches by indexing in-memory tensors, in an order that depends only on (seed, epoch).

Because the order is a pure function of (seed, epoch), resuming mid-epoch needs only the
epoch and the number of steps already taken: no sampler state to save.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """A permutation of range(num_samples), the same for the same (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


@dataclass(frozen=True)
class StepPlan:
    """How one epoch is cut: `steps` optimizer steps of `accumulate` micro-batches of `batch_size`."""

    num_samples: int
    batch_size: int
    accumulate: int

    @property
    def samples_per_step(self) -> int:
        return self.batch_size * self.accumulate

    @property
    def steps(self) -> int:
        # drop the incomplete last step so every step sees the same number of samples
        return max(self.num_samples // self.samples_per_step, 1)

    def micro_batches(self, order: torch.Tensor, step: int) -> list[torch.Tensor]:
        """Index tensors of the micro-batches that make up optimizer step `step` of this epoch."""
        start = step * self.samples_per_step
        indices = order[start : start + self.samples_per_step]
        return list(indices.split(self.batch_size))


def iterate_steps(
    plan: StepPlan, seed: int, epoch: int, start_step: int = 0
) -> Iterator[tuple[int, list[torch.Tensor]]]:
    """Yield (step_in_epoch, micro-batch indices) from `start_step` to the end of the epoch."""
    order = epoch_order(plan.num_samples, seed, epoch)
    for step in range(start_step, plan.steps):
        yield step, plan.micro_batches(order, step)


def eval_batches(num_samples: int, batch_size: int) -> Iterator[slice]:
    """Contiguous slices in order: evaluation needs no shuffling (slices are views, no copy)."""
    for start in range(0, num_samples, batch_size):
        yield slice(start, min(start + batch_size, num_samples))
