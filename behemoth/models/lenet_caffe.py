"""Caffe's "LeNet" (examples/mnist/lenet.prototxt), the LeNet-5 that Deep Compression (Han et al. 2016)
prunes.

conv 20@5x5 -> maxpool 2 -> conv 50@5x5 -> maxpool 2 -> fc 500 -> relu -> fc classes.
No activation after the convolutions, as in the prototxt. 431,080 parameters on 1x28x28 with 10 classes.
"""

from collections import OrderedDict

from pydantic import BaseModel, ConfigDict
from torch import nn

from behemoth.models.common import MNIST_SPEC, flat_features, image_shape
from behemoth.models.entry import ModelEntry
from behemoth.spec import DataSpec


class LeNetCaffeOptions(BaseModel):
    """No options: the architecture is fixed so its parameter count matches the paper."""

    model_config = ConfigDict(extra="forbid")


class LeNetCaffe(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(input_shape[0], 20, 5),  # (B, 20, 24, 24) on 28x28
                pool1=nn.MaxPool2d(2),  # (B, 20, 12, 12)
                conv2=nn.Conv2d(20, 50, 5),  # (B, 50, 8, 8)
                pool2=nn.MaxPool2d(2),  # (B, 50, 4, 4)
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),  # (B, 800)
                fc1=nn.Linear(flat_features(self.features, input_shape), 500),
                relu=nn.ReLU(),
                fc2=nn.Linear(500, num_classes),
            )
        )

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        return self.classifier(self.features(x))


def build(opts: LeNetCaffeOptions, spec: DataSpec) -> LeNetCaffe:
    return LeNetCaffe(image_shape(spec, "lenet_caffe"), spec.num_classes)


ENTRY = ModelEntry(
    name="lenet_caffe",
    summary="Caffe LeNet (conv20-conv50-fc500), the LeNet-5 pruned in Deep Compression: 431K params",
    options=LeNetCaffeOptions,
    build=build,
    tasks=("classification",),
    example_spec=MNIST_SPEC,
)
