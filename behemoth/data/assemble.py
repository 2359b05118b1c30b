"""Turn raw in-memory arrays into a DataBundle: test/val splits, limits, float tensors, normalisation.

Every classification loader ends here, so splits and normalisation behave the same for all of them.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from behemoth.config import DataConfig
from behemoth.data.bundle import DataBundle, TensorSplit
from behemoth.data.checks import check_finite, check_labels
from behemoth.data.splits import random_split, stratified_split
from behemoth.spec import DataSpec

TEST_FRACTION = 0.2  # held out when a source has no official test split


@dataclass
class RawClassification:
    """What a classification loader read, before any splitting or scaling.

    x is (N, C, H, W) for images or (N, F) for tables, in the source's own units; `scale` is what those
    units are divided by first (255 for 8-bit pixels) so that predict can preprocess new raw inputs alike.
    """

    x: np.ndarray
    y: np.ndarray  # (N,) int64 in [0, len(class_names))
    class_names: list[str]
    source: str  # named in error messages
    x_test: np.ndarray | None = None  # official test split, when the source has one
    y_test: np.ndarray | None = None
    scale: float = 1.0
    stats: tuple[list[float], list[float]] | None = None  # fixed (mean, std) per channel, else from train
    meta: dict[str, Any] = field(default_factory=dict)


def build_classification(name: str, raw: RawClassification, cfg: DataConfig) -> DataBundle:
    """Split (test, then val from train), apply limits, convert to float32 and normalise.

    The statistics come from the training samples actually used (after the val split and train_limit),
    unless the source fixes them (MNIST's classic 0.1307/0.3081); val and test reuse them.
    """
    num_classes = len(raw.class_names)
    check_labels(raw.y, num_classes, raw.source)
    check_finite(raw.x, raw.source)
    meta = dict(raw.meta, source=raw.source, split_seed=cfg.split_seed)

    x, y = raw.x, raw.y
    if raw.x_test is None or raw.y_test is None:
        kept, held = stratified_split(y, TEST_FRACTION, cfg.split_seed)
        x_test, y_test, x, y = x[held], y[held], x[kept], y[kept]
        meta["test_split"] = f"held out: {TEST_FRACTION:.0%} of each class, by data.split_seed"
    else:
        x_test, y_test = raw.x_test, raw.y_test
        check_labels(y_test, num_classes, raw.source)
        check_finite(x_test, raw.source)
        meta["test_split"] = "official"

    train_idx, val_idx = random_split(len(y), cfg.val_fraction, cfg.split_seed)
    meta["val_split"] = (
        f"random {cfg.val_fraction:g} of train, by data.split_seed" if len(val_idx) else "none"
    )
    train_idx = train_idx[: cfg.train_limit]

    train_x = to_float(x[train_idx], raw.scale)
    mean, std = raw.stats or feature_stats(train_x)
    normalise = normaliser(mean, std, train_x.ndim)
    train = TensorSplit(normalise(train_x), torch.from_numpy(y[train_idx]))
    val = None
    if len(val_idx):
        val = TensorSplit(normalise(to_float(x[val_idx], raw.scale)), torch.from_numpy(y[val_idx]))
    x_test, y_test = x_test[: cfg.test_limit], y_test[: cfg.test_limit]
    test = TensorSplit(normalise(to_float(x_test, raw.scale)), torch.from_numpy(np.ascontiguousarray(y_test)))

    meta.update(
        mean=list(map(float, mean)),
        std=list(map(float, std)),
        input_scale=float(raw.scale),
        layout="image" if train_x.ndim == 4 else "table",
        normalisation="per channel" if train_x.ndim == 4 else "per feature",
    )
    spec = DataSpec("classification", tuple(int(d) for d in train_x.shape[1:]), num_classes)
    return DataBundle(name, spec, train, val, test, list(raw.class_names), meta)


def to_float(x: np.ndarray, scale: float) -> torch.Tensor:
    """float32 tensor of x / scale (a fresh tensor: later in-place normalisation touches no source array)."""
    out = torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))  # source may be read-only
    return out.div_(scale) if scale != 1.0 else out


def feature_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Mean and std per channel (images, (N, C, H, W)) or per feature (tables, (N, F)).

    A constant channel or feature gets std 1, so it becomes 0 rather than NaN.
    """
    dims = (0, 2, 3) if x.ndim == 4 else (0,)
    std, mean = torch.std_mean(x, dim=dims, correction=0)  # Welford: stable in float32
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


def normaliser(mean: list[float], std: list[float], ndim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(x - mean) / std per channel or feature, in place (x is always a fresh tensor from to_float)."""
    shape = (1, -1, 1, 1) if ndim == 4 else (1, -1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return x.sub_(mean_t).div_(std_t)

    return normalise
