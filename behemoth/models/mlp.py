"""Fully connected classifier: flatten the sample, then Linear -> activation (-> dropout) per hidden layer.

The presets are the MLPs of the classic papers, all for 784 inputs and 10 classes:
LeNet-300-100 (LeCun et al. 1998), 2x800 and 2x1200 (Hinton et al. 2012, dropout), and the
FedAvg paper's "2NN" 784-200-200-10 (McMahan et al. 2017). On other data they keep their hidden
sizes and adapt the input and output layers.
"""

import math
from collections import OrderedDict
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from behemoth.models.common import ACTIVATIONS, MNIST_SPEC
from behemoth.models.entry import ModelEntry
from behemoth.spec import DataSpec

PRESETS: dict[str, list[int]] = {
    "lenet-300-100": [300, 100],
    "2x1200": [1200, 1200],
    "2x800": [800, 800],
    "784-200-200-10": [200, 200],
}


class MLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: Literal["lenet-300-100", "2x1200", "2x800", "784-200-200-10"] | None = None
    hidden: list[Annotated[int, Field(ge=1)]] = [300, 100]  # used when no preset; [] is logistic regression
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation: Literal["relu", "tanh"] = "relu"

    @model_validator(mode="after")
    def _preset_or_hidden(self) -> "MLPOptions":
        if self.preset is not None and "hidden" in self.model_fields_set:
            raise ValueError("set model.preset or model.hidden, not both")
        return self

    @property
    def layer_sizes(self) -> list[int]:
        return PRESETS[self.preset] if self.preset is not None else list(self.hidden)


class MLP(nn.Module):
    """Flatten -> [Linear -> act -> dropout] * len(hidden) -> Linear to classes."""

    def __init__(
        self, in_features: int, hidden: list[int], num_classes: int, activation: str, dropout: float
    ):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"act{i}"] = ACTIVATIONS[activation]()
            layers[f"drop{i}"] = nn.Dropout(dropout)
            width = h
        layers["out"] = nn.Linear(width, num_classes)
        self.net = nn.Sequential(layers)  # named layers: stable state_dict keys whatever the options

    def forward(self, x):  # (B, *input_shape) -> (B, classes)
        return self.net(x)


def build(opts: MLPOptions, spec: DataSpec) -> MLP:
    return MLP(math.prod(spec.input_shape), opts.layer_sizes, spec.num_classes, opts.activation, opts.dropout)


ENTRY = ModelEntry(
    name="mlp",
    summary="LeNet-300-100 style fully connected net (presets: lenet-300-100, 2x800, 2x1200, 784-200-200-10)",
    options=MLPOptions,
    build=build,
    tasks=("classification",),
    example_spec=MNIST_SPEC,
)
