"""Activation checkpointing per block: keep only each block's input in forward, recompute the rest in
backward.

Uses torch's composable `checkpoint` (non-reentrant, hooks on the module): parameter names do not
change, so checkpoints, optimizers and FSDP see the same model. The recomputed forward replays the
saved RNG state (dropout draws the same mask), so loss and gradients equal those of a run without it;
only memory (less) and time (one more forward per block, ~+30% compute) change.
"""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed._composable import checkpoint

from behemoth.distributed.blocks import model_blocks
from behemoth.errors import ConfigError


@contextlib.contextmanager
def _buffers_kept(module: nn.Module) -> Iterator[None]:
    """Undo buffer updates made while recomputing (BatchNorm would count each batch twice)."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def checkpoint_blocks(model: nn.Module) -> int:
    """Checkpoint every block of `model` in place (see blocks.model_blocks); returns how many."""
    blocks = model_blocks(model)
    if not blocks:
        raise ConfigError(
            f"train.activation_checkpointing = true: model {type(model).__name__} has no blocks to "
            "checkpoint (gpt, vit and cnn have: `model.blocks`, or conv blocks in `model.features`; "
            "hf models their decoder layers)"
        )
    for block in blocks:
        checkpoint(block, context_fn=lambda block=block: (contextlib.nullcontext(), _buffers_kept(block)))
    return len(blocks)
