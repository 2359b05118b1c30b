"""data.augment fitted to a loaded dataset: each channel's value range comes from its training split."""

import torch

from behemoth.config import AugmentConfig
from behemoth.data.augment.compose import Augment, build_augment, channel_range
from behemoth.data.bundle import DataBundle
from behemoth.data.shards import StreamedSplit


def augment_for(cfg: AugmentConfig, data: DataBundle) -> Augment | None:
    """data.augment for this dataset, with each channel's value range taken from the training data."""
    if not cfg.enabled:
        return None
    low = high = None
    if isinstance(data.train, StreamedSplit):
        value_range = data.train.shards.info.x_range
        if value_range is not None:
            low, high = torch.tensor(value_range[0]), torch.tensor(value_range[1])
    elif data.train.x.ndim == 4 and data.train.x.is_floating_point():
        low, high = channel_range(data.train.x)
    return build_augment(cfg, data.spec, low, high)
