"""Small pieces shared by the zoo's models: example specs, activations, shape probing."""

import torch
from torch import nn

from behemoth.errors import ModelError
from behemoth.spec import DataSpec

# The data each model is listed with in `behemoth models`.
MNIST_SPEC = DataSpec(task="classification", input_shape=(1, 28, 28), num_classes=10)
BYTES_LM_SPEC = DataSpec(task="language_model", input_shape=(128,), num_classes=256)

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights count once, as `model.parameters()` yields them once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def image_shape(spec: DataSpec, model: str) -> tuple[int, int, int]:
    """(C, H, W) of an image spec, or a ModelError saying the model wants images."""
    if len(spec.input_shape) != 3:
        raise ModelError(
            f"model {model!r} needs images (C, H, W); the data has samples of shape {spec.input_shape}"
        )
    c, h, w = spec.input_shape
    return c, h, w


def flat_features(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Size of `features(x)` flattened, found with one dummy forward so any input size works.

    Raises ModelError when the input is too small and a map collapses to nothing.
    """
    was_training = features.training
    features.eval()  # batch norm must not update its running stats on the dummy
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *input_shape))  # (1, C', H', W')
    except RuntimeError as exc:
        raise ModelError(f"input of shape {input_shape} is too small for this model: {exc}") from None
    finally:
        features.train(was_training)
    if out.numel() == 0:
        empty = tuple(out.shape[1:])
        raise ModelError(
            f"input of shape {input_shape} is too small for this model: its feature map {empty} is empty"
        )
    return out[0].numel()
