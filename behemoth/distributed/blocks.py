"""The repeated blocks of a model: the units that activation checkpointing and FSDP take one at a time.

A convention rather than a registry: transformer blocks live in `model.blocks` (an nn.ModuleList: GPT,
ViT), convolutional blocks are the nn.Sequential children of `model.features` (the CNN's conv blocks).
A user model that follows it gets per-block checkpointing and sharding for free.
"""

from torch import nn


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in forward order; [] when it has none (it is then one unit)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        # a pipeline stage keeps only its own blocks (the others are parameter-free placeholders)
        return [block for block in blocks if any(True for _ in block.parameters())]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [child for child in features.children() if isinstance(child, nn.Sequential)]
    return []
