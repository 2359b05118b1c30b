"""ShardFeed: training batches streamed from compressed shards (TensorFeed's counterpart for data on disk).

Like every feed, a pure function of (seed, epoch, step): a run resumed mid-epoch sees the same batches.
behemoth.training.assembly.build_feed picks it when data.name = "shards" streams.
"""

from collections.abc import Iterator

import torch

from behemoth.data.randomness import step_generator
from behemoth.data.shards import ShardDataset
from behemoth.distributed import DistEnv, shard
from behemoth.training.batching import StepPlan
from behemoth.training.feed import BatchTransform, MicroBatch


class ShardFeed:
    """Global batches from a ShardDataset stream; each rank keeps its contiguous slice (as TensorFeed does).

    Every rank reads the whole stream (the position is world-size free, so a run resumes at another
    number of processes); decoding to float and the transform run on this rank's slice only.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        accumulate: int,
        seed: int,
        device: torch.device,
        env: DistEnv | None = None,
        transform: BatchTransform | None = None,
        channels_last: bool = False,
    ) -> None:
        self.dataset, self.seed, self.device, self.env = dataset, seed, device, env
        self.transform, self.channels_last = transform, channels_last
        self.plan = StepPlan(len(dataset), batch_size, accumulate)
        self.steps_per_epoch = self.plan.steps

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, list[MicroBatch]]]:
        rank = self.env.rank if self.env is not None else 0
        batches = self.dataset.batches(epoch, self.plan.batch_size, start_step * self.plan.samples_per_step)
        try:
            for step in range(start_step, self.plan.steps):
                global_batches = [batch for _, batch in zip(range(self.plan.accumulate), batches)]
                if not global_batches:
                    return
                total = sum(len(x) for x, _ in global_batches)
                micro_batches = []
                for micro, (x_np, y_np) in enumerate(global_batches):
                    rows = shard(torch.arange(len(x_np)), self.env)  # this rank's contiguous slice
                    part = slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)
                    x, y = self.dataset.split.to_tensors(x_np[part], y_np[part])
                    x = x.to(self.device, non_blocking=True)
                    y = y.to(self.device, non_blocking=True)
                    if self.transform is not None:
                        x, y = self.transform(x, y, step_generator(self.seed, epoch, step, micro, rank))
                    if self.channels_last and x.ndim == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    micro_batches.append(MicroBatch(x, y, len(x_np) / total))
                yield step, micro_batches
        finally:
            batches.close()
