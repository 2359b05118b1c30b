"""The tensor side of `behemoth.spec.Preprocessing`: raw inputs to model inputs and back, and the black image.

Every stage that turns pixels into model inputs (predict) or model inputs into pictures and baselines
(explain) goes through these, so they agree with the loaders that normalised the training data.
"""

import torch

from behemoth.spec import Preprocessing


def _per_channel(values: tuple[float, ...], ndim: int, dtype: torch.dtype) -> torch.Tensor:
    """(1, C, 1, 1) for images, (1, F) for tables: broadcast over a batch."""
    return torch.tensor(values, dtype=dtype).view(1, -1, *([1] * (ndim - 2)))


def normalise(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Raw inputs (source units, e.g. 0..255 pixels) -> what the model was trained on."""
    x = x.float() / prep.scale
    return (x - _per_channel(prep.mean, x.ndim, x.dtype)) / _per_channel(prep.std, x.ndim, x.dtype)


def to_scaled_units(x: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Model inputs -> raw units divided by scale (pixels in [0, 1] for 8-bit images): for pictures."""
    return x * _per_channel(prep.std, x.ndim, x.dtype) + _per_channel(prep.mean, x.ndim, x.dtype)


def black(like: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """The all-zero raw input (a black image) in model-input space, shaped like `like`."""
    zero = -_per_channel(prep.mean, like.ndim, like.dtype) / _per_channel(prep.std, like.ndim, like.dtype)
    return zero.expand_as(like).clone()
