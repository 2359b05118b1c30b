"""User-model factories for tests: `model.name = "tests.models_fixtures.tiny:build"`."""

import math

from torch import nn

from behemoth.spec import DataSpec


def build(spec: DataSpec, hidden: int = 16) -> nn.Module:
    """A one-hidden-layer MLP that fits any classification data."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(spec.input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, spec.num_classes),
    )


def wrong_classes(spec: DataSpec) -> nn.Module:
    """Off by one: predicts one class too many, which build_model must reject."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), spec.num_classes + 1))


def no_spec(width: int = 4) -> nn.Module:
    """A factory that does not take `spec`: it gets only its options."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.Linear(width, 10))
