"""LeNet-5 (LeCun et al. 1998), with the usual modern simplifications.

conv 6@5x5 -> act -> pool 2 -> conv 16@5x5 -> act -> pool 2 -> fc 120 -> act -> fc 84 -> act -> fc classes.
Simplified from the paper: C3 connects to all 6 maps (the paper used a sparse table), subsampling
is a plain pool (no trainable coefficient), and the output is a Linear layer, not RBF units.

Padding: the paper fed 32x32 images holding 28x28 digits, so conv1 pads by 2 and MNIST maps stay
28x28. conv2 is unpadded as in the paper when the input is at least 16x16 (the second pooled map is
then >= 2x2); smaller inputs such as 8x8 digits pad conv2 by 2 too, so 8x8 -> 4x4 -> 2x2 instead of
collapsing to nothing.
"""

from collections import OrderedDict
from typing import Literal

from pydantic import BaseModel, ConfigDict
from torch import nn

from behemoth.models.common import ACTIVATIONS, MNIST_SPEC, flat_features, image_shape
from behemoth.models.entry import ModelEntry
from behemoth.spec import DataSpec

MIN_UNPADDED_CONV2 = 16  # smallest input side for which the paper's unpadded conv2 leaves a >= 2x2 map


class LeNet5Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    activation: Literal["tanh", "relu"] = "tanh"  # tanh as in the paper
    pool: Literal["avg", "max"] = "avg"  # avg is the paper's subsampling


class LeNet5(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, activation: str, pool: str):
        super().__init__()
        act = ACTIVATIONS[activation]
        pool_cls = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        c, h, w = input_shape
        conv2_pad = 0 if min(h, w) >= MIN_UNPADDED_CONV2 else 2
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(c, 6, 5, padding=2),  # (B, 6, 28, 28) on MNIST
                act1=act(),
                pool1=pool_cls(2),  # (B, 6, 14, 14)
                conv2=nn.Conv2d(6, 16, 5, padding=conv2_pad),  # (B, 16, 10, 10)
                act2=act(),
                pool2=pool_cls(2),  # (B, 16, 5, 5)
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),  # (B, 400)
                fc1=nn.Linear(flat_features(self.features, input_shape), 120),
                act3=act(),
                fc2=nn.Linear(120, 84),
                act4=act(),
                fc3=nn.Linear(84, num_classes),
            )
        )

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        return self.classifier(self.features(x))


def build(opts: LeNet5Options, spec: DataSpec) -> LeNet5:
    return LeNet5(image_shape(spec, "lenet5"), spec.num_classes, opts.activation, opts.pool)


ENTRY = ModelEntry(
    name="lenet5",
    summary="LeNet-5 (LeCun et al. 1998): conv6-conv16-fc120-fc84, tanh and average pooling",
    options=LeNet5Options,
    build=build,
    tasks=("classification",),
    example_spec=MNIST_SPEC,
)
