"""The FedAvg paper's CNN (McMahan et al. 2017): two 5x5 conv blocks, a 512-unit fc layer, the output.

conv 32@5x5 -> relu -> maxpool 2 -> conv 64@5x5 -> relu -> maxpool 2 -> fc 512 -> relu -> fc classes:
1,663,370 parameters on MNIST, the paper's count. With norm="batch" each conv is followed by
BatchNorm2d and loses its bias (the norm's shift replaces it). The module is plain Sequential
blocks, grouped as `features` and `classifier`, so bf16 autocast, channels_last, torch.compile and
later pruning all see ordinary conv/linear ops.
"""

from collections import OrderedDict
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from behemoth.models.common import MNIST_SPEC, flat_features, image_shape
from behemoth.models.entry import ModelEntry
from behemoth.spec import DataSpec

Width = Annotated[int, Field(ge=1)]


class CNNOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: tuple[Width, Width] = (32, 64)  # output channels of the two conv blocks
    hidden: int = Field(512, ge=1)  # width of the fully connected layer
    norm: Literal["none", "batch"] = "none"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # before each fully connected layer
    kernel_size: int = Field(5, ge=1, le=15)  # padded by kernel_size // 2, so odd sizes keep the map size


def conv_block(c_in: int, c_out: int, kernel_size: int, norm: str) -> nn.Sequential:
    """conv -> (batch norm) -> relu -> maxpool 2: halves the map."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=norm == "none")
    )
    if norm == "batch":
        layers["norm"] = nn.BatchNorm2d(c_out)
    layers["relu"] = nn.ReLU()
    layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class CNN(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, opts: CNNOptions):
        super().__init__()
        c1, c2 = opts.channels
        self.features = nn.Sequential(
            OrderedDict(
                block1=conv_block(input_shape[0], c1, opts.kernel_size, opts.norm),  # (B, c1, H/2, W/2)
                block2=conv_block(c1, c2, opts.kernel_size, opts.norm),  # (B, c2, H/4, W/4)
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),  # (B, c2 * H/4 * W/4): 3136 on MNIST
                drop1=nn.Dropout(opts.dropout),
                fc1=nn.Linear(flat_features(self.features, input_shape), opts.hidden),
                relu=nn.ReLU(),
                drop2=nn.Dropout(opts.dropout),
                fc2=nn.Linear(opts.hidden, num_classes),
            )
        )

    def forward(self, x):  # (B, C, H, W) -> (B, classes)
        return self.classifier(self.features(x))


def build(opts: CNNOptions, spec: DataSpec) -> CNN:
    return CNN(image_shape(spec, "cnn"), spec.num_classes, opts)


ENTRY = ModelEntry(
    name="cnn",
    summary="FedAvg paper CNN: two 5x5 conv blocks (32, 64) and fc 512; optional batch norm",
    options=CNNOptions,
    build=build,
    tasks=("classification",),
    example_spec=MNIST_SPEC,
)
