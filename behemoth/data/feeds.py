"""The training Feed a run config asks for: sampler + augmentation over in-memory data, or a stream of shards.

`build_feed(cfg, data, env)` is the adapter run_training calls; it returns None when the config asks for
nothing beyond the default (every row, shuffled, no augmentation), so that path stays the loop's own.
Both feeds are pure functions of (seed, epoch, step): a run resumed mid-epoch sees the same batches.
"""

from collections.abc import Iterator

import torch

from behemoth.config import RunConfig
from behemoth.data.augment import Augment, build_augment, channel_range
from behemoth.data.bundle import DataBundle
from behemoth.data.sampling import build_sampler
from behemoth.data.shards import ShardDataset, StreamedSplit
from behemoth.distributed import DistEnv, shard
from behemoth.errors import ConfigError
from behemoth.training.batching import StepPlan
from behemoth.training.feed import BatchTransform, Feed, MicroBatch, TensorFeed, step_generator
from behemoth.training.loop import resolve_device


class ShardFeed:
    """Global batches from a ShardDataset stream; each rank keeps its contiguous slice (as TensorFeed does).

    Every rank reads the whole stream (the position is world-size free, so a run resumes at another
    number of processes); decoding to float and the transform run on this rank's slice only.
    """

    def __init__(
        self, dataset: ShardDataset, batch_size: int, accumulate: int, seed: int, device: torch.device,
        env: DistEnv | None = None, transform: BatchTransform | None = None, channels_last: bool = False,
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


def augment_for(cfg: RunConfig, data: DataBundle) -> Augment | None:
    """data.augment for this dataset, with each channel's value range taken from the training data."""
    if not cfg.data.augment.enabled:
        return None
    low = high = None
    if isinstance(data.train, StreamedSplit):
        value_range = data.train.shards.info.x_range
        if value_range is not None:
            low, high = torch.tensor(value_range[0]), torch.tensor(value_range[1])
    elif data.train.x.ndim == 4 and data.train.x.is_floating_point():
        low, high = channel_range(data.train.x)
    return build_augment(cfg.data.augment, data.spec, low, high)


def build_feed(cfg: RunConfig, data: DataBundle, env: DistEnv | None = None) -> Feed | None:
    """The training feed for `cfg` (None: the loop's default feed does exactly what the config asks)."""
    device = env.device if env is not None else resolve_device(cfg.train.device)
    transform = augment_for(cfg, data)
    if isinstance(data.train, StreamedSplit):
        if cfg.data.sampling.kind != "shuffle":
            raise ConfigError(f"data.sampling.kind = {cfg.data.sampling.kind!r}: needs the training split in memory; "
                              "set data.shards.stream = false (a stream is shuffled by shard and window)")
        shards = cfg.data.shards
        dataset = ShardDataset(data.train.shards, cfg.train.seed, shards.shuffle_buffer, shards.prefetch)
        return ShardFeed(dataset, cfg.data.batch_size, cfg.train.accumulate, cfg.train.seed, device, env, transform,
                         cfg.train.channels_last)
    sampler = build_sampler(cfg.data.sampling, data.train.y)
    if sampler is None and transform is None:
        return None
    return TensorFeed(data.train, cfg.data.batch_size, cfg.train.accumulate, cfg.train.seed, device, env,
                      sampler=sampler, transform=transform, channels_last=cfg.train.channels_last)

