"""Reusable scratch tensors for the augmentation ops.

Why: on the CPU every fresh multi-megabyte tensor is new memory the kernel must fault in page by page
(glibc returns large freed blocks to the system), and in a VM that costs more than the arithmetic: a
warp + blur of 256 MNIST images ran 4x faster with its intermediates (sampling grid, shifted input,
blur matrices) reused (measured with bench/augment.py's shapes). Only intermediates live here, never a
tensor handed back to the caller. One Workspace per thread (threading.local), so a shared Augment is safe.
"""

import threading

import torch


class Workspace(threading.local):
    """Named scratch buffers that grow to the largest size asked for and are reused as views."""

    def __init__(self) -> None:
        self._flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of `shape` with like's dtype and device (valid until the next
        get(name))."""
        numel = 1
        for side in shape:
            numel *= side
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._flat[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat[:numel].view(shape)


def scratch(
    workspace: Workspace | None, name: str, shape: tuple[int, ...], like: torch.Tensor
) -> torch.Tensor:
    """A buffer from `workspace`, or a fresh tensor without one."""
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.get(name, shape, like)
