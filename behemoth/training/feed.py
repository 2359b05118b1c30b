"""Where the loop's batches come from: a `Feed` yields, for each optimizer step of an epoch, this rank's
micro-batches, on the device and already transformed (augmented).

The loop knows only this protocol, so in-memory tensors (`TensorFeed`, the default), sampled subsets
(a `Sampler`) and streamed shards plug in without touching the loop. A feed must be a pure function of
(seed, epoch, step): that is what makes mid-epoch resume exact without saving any feed state.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from behemoth.data.bundle import TensorSplit
from behemoth.data.randomness import step_generator
from behemoth.distributed import DistEnv, shard
from behemoth.training.batching import StepPlan, epoch_order

# (x, y, generator) -> (x, y): per-sample random parameters drawn from `generator` (seeded per step),
# so an augmented run is reproducible and resumes exactly. y may come back as soft targets (B, K) float.
BatchTransform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class MicroBatch:
    x: torch.Tensor  # this rank's inputs, on the device
    y: torch.Tensor  # this rank's targets: (B,) labels, (B, T) tokens, or (B, K) soft targets
    weight: float  # the micro-batch's share of the global step: len(global micro-batch) / samples in step


class Feed(Protocol):
    steps_per_epoch: int

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, list[MicroBatch]]]:
        """(step_in_epoch, micro-batches) from `start_step` to the end of `epoch`."""
        ...


class Sampler(Protocol):
    """Which rows of the split an epoch visits, in which order: a pure function of (seed, epoch)."""

    epoch_size: int

    def order(self, seed: int, epoch: int) -> torch.Tensor:  # (epoch_size,) int64 row indices
        ...


@dataclass(frozen=True)
class Shuffle:
    """The default sampler: every row once per epoch, in a fresh random order."""

    epoch_size: int

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        return epoch_order(self.epoch_size, seed, epoch)


class TensorFeed:
    """In-memory tensors batched by indexing (no per-sample Python work), sharded across ranks.

    Each rank takes a contiguous 1/world slice of every global micro-batch (see distributed.sharding).
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        accumulate: int,
        seed: int,
        device: torch.device,
        env: DistEnv | None = None,
        sampler: Sampler | None = None,
        transform: BatchTransform | None = None,
        channels_last: bool = False,
    ) -> None:
        self.split, self.seed, self.device, self.env = split, seed, device, env
        self.sampler = sampler or Shuffle(len(split))
        self.transform, self.channels_last = transform, channels_last
        self.plan = StepPlan(self.sampler.epoch_size, batch_size, accumulate)
        self.steps_per_epoch = self.plan.steps

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, list[MicroBatch]]]:
        order = self.sampler.order(self.seed, epoch)
        rank = self.env.rank if self.env is not None else 0
        for step in range(start_step, self.plan.steps):
            global_batches = self.plan.micro_batches(order, step)
            total = sum(len(idx) for idx in global_batches)
            batches = []
            for micro, global_idx in enumerate(global_batches):
                idx = shard(global_idx, self.env)  # this rank's slice of the micro-batch
                x = self.split.x[idx].to(self.device, non_blocking=True)
                y = self.split.y[idx].to(self.device, non_blocking=True)
                if self.transform is not None:
                    x, y = self.transform(x, y, step_generator(self.seed, epoch, step, micro, rank))
                if self.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                batches.append(MicroBatch(x, y, len(global_idx) / total))
            yield step, batches
