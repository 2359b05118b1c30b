"""One assembly path: a run config -> data, model, feed and device, for every stage that trains or evaluates.

`behemoth train`, tune trials, compress retraining and QAT, distillation, federated clients, explain,
evaluate and predict all come through here, so [data.sampling], [data.augment] and streamed shards mean
the same thing wherever a model sees data, and a model is built (seeded, in train.param_dtype) one way.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from behemoth.config import RunConfig
from behemoth.data import DataBundle, load_data
from behemoth.data.augment.for_data import augment_for
from behemoth.data.sampling import build_sampler
from behemoth.data.shards import ShardDataset, StreamedSplit
from behemoth.distributed import DistEnv
from behemoth.errors import ConfigError, RunDirError
from behemoth.models import build_model
from behemoth.runs import RunDir, read_spec
from behemoth.spec import DataSpec
from behemoth.training.allocator import return_freed_memory
from behemoth.training.checkpoint import (
    checkpoint_weights,
    latest_checkpoint,
    load_model_weights,
    load_weights,
)
from behemoth.training.feed import Feed, TensorFeed
from behemoth.training.feeds import ShardFeed
from behemoth.training.loop import resolve_device
from behemoth.training.lora import add_lora
from behemoth.training.precision import build_with_param_dtype


@dataclass
class Assembly:
    """What a stage needs to train or evaluate a config's model on its data."""

    data: DataBundle
    model: nn.Module
    feed: Feed  # the training batches: sampled, augmented or streamed as [data] says
    device: torch.device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def load_run_data(cfg: RunConfig) -> DataBundle:
    """The config's dataset, with the process-wide settings (threads, allocator) applied first."""
    set_threads(cfg.train.threads)
    if cfg.train.release_freed_memory:
        return_freed_memory()  # process-wide, like the thread count
    return load_data(cfg.data)


def build_run_model(cfg: RunConfig, spec: DataSpec, seed: int | None = None) -> nn.Module:
    """The config's model for data of shape `spec`, seeded by train.seed (or `seed`), in train.param_dtype;
    with [train.lora], its base weights frozen under LoRA adapters."""
    seed_everything(cfg.train.seed if seed is None else seed)
    model = build_with_param_dtype(
        lambda: build_model(cfg.model.name, cfg.model.options, spec), cfg.train.param_dtype
    )
    return with_run_lora(model, cfg)


def with_run_lora(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """`model` under [train.lora]'s adapters, on the base train.lora.base_run names (if any); `model` as it
    is without [train.lora]."""
    lora = cfg.train.lora
    if lora is None:
        return model
    if lora.base_run is not None:
        base = RunDir(Path(lora.base_run))
        if not base.weights.is_file():
            raise RunDirError(
                f"train.lora.base_run = {lora.base_run!r}: no trained weights there ({base.weights.name})"
            )
        try:
            load_weights(model, base.weights)
        except RuntimeError as exc:
            reason = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise RunDirError(
                f"train.lora.base_run = {lora.base_run!r} does not fit the model: {reason}"
            ) from None
    return add_lora(model, lora)


def build_feed(
    cfg: RunConfig,
    data: DataBundle,
    env: DistEnv | None = None,
    *,
    batch_size: int | None = None,
    seed: int | None = None,
) -> Feed:
    """The training feed for `cfg` over `data.train`: a shard stream, or in-memory rows with data.sampling and
    data.augment. `batch_size` and `seed` replace data.batch_size and train.seed (a federated client's B and
    per-round seed)."""
    device = env.device if env is not None else resolve_device(cfg.train.device)
    batch_size = batch_size or cfg.data.batch_size
    seed = cfg.train.seed if seed is None else seed
    transform = augment_for(cfg.data.augment, data)
    if isinstance(data.train, StreamedSplit):
        if cfg.data.sampling.kind != "shuffle":
            raise ConfigError(
                f"data.sampling.kind = {cfg.data.sampling.kind!r}: needs the training split in memory; "
                "set data.shards.stream = false (a stream is shuffled by shard and window)"
            )
        shards = cfg.data.shards
        dataset = ShardDataset(data.train.shards, seed, shards.shuffle_buffer, shards.prefetch)
        return ShardFeed(
            dataset, batch_size, cfg.train.accumulate, seed, device, env, transform, cfg.train.channels_last
        )
    sampler = build_sampler(cfg.data.sampling, data.train.y)
    return TensorFeed(
        data.train,
        batch_size,
        cfg.train.accumulate,
        seed,
        device,
        env,
        sampler=sampler,
        transform=transform,
        channels_last=cfg.train.channels_last,
    )


def assemble(cfg: RunConfig, env: DistEnv | None = None, data: DataBundle | None = None) -> Assembly:
    """Data (loaded, or the `data` given: tune trials share one copy), model and feed for `cfg`."""
    data = data if data is not None else load_run_data(cfg)
    model = build_run_model(cfg, data.spec)
    device = env.device if env is not None else resolve_device(cfg.train.device)
    return Assembly(data, model, build_feed(cfg, data, env), device)


def prepare(cfg: RunConfig) -> tuple[DataBundle, nn.Module]:
    """Data and model, before anything on disk is touched (a bad config fails here, having written
    nothing)."""
    data = load_run_data(cfg)
    return data, build_run_model(cfg, data.spec)


def load_trained_model(run_dir: Path, cfg: RunConfig) -> nn.Module:
    """A run's model with its final weights (or its latest checkpoint's), in eval mode."""
    spec, _, _ = read_spec(run_dir)
    # A LoRA run saves its adapters only: frozen weights drawn at random when it was built (a new classifier
    # head of an hf model) must be drawn again as train.seed drew them, without touching the caller's RNG.
    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        model = with_run_lora(build_model(cfg.model.name, cfg.model.options, spec), cfg)
    weights = RunDir(run_dir).weights
    if weights.is_file():
        load_weights(model, weights)
    else:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise RunDirError(f"{run_dir} has no trained weights (model.safetensors) and no checkpoint")
        # either kind of checkpoint (safetensors or DCP); a LoRA run's holds its adapters only
        load_model_weights(model, checkpoint_weights(checkpoint))
    return model.eval()
