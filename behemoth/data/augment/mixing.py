"""Mixup and CutMix on a batch: each sample blends with a partner from the same batch, and so do the
targets, which become soft (B, K) float rows (the loop's loss and accuracy take soft targets)."""

import torch
import torch.nn.functional as F

from behemoth.data.augment.photometric import box_mask
from behemoth.data.augment.workspace import Workspace, scratch


def soft_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) labels -> (B, K) one-hot float; soft targets pass through."""
    return y if y.is_floating_point() else F.one_hot(y, num_classes).float()


def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    partner: torch.Tensor,
    lam: torch.Tensor,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_i <- lam_i x_i + (1 - lam_i) x_partner(i); same for the soft targets y (B, K).
    lam (B,): 1 = unmixed."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    lam_x = lam.to(x.dtype).view(shape)
    partners = torch.index_select(x, 0, partner, out=scratch(workspace, "partners", tuple(x.shape), x))
    mixed = torch.lerp(partners, x, lam_x)
    lam_y = lam.to(y.dtype)[:, None]
    return mixed, torch.lerp(y[partner], y, lam_y)


def cutmix(
    x: torch.Tensor,
    y: torch.Tensor,
    partner: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    box_h: torch.Tensor,
    box_w: torch.Tensor,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each partner's box into x (B, C, H, W); targets mix by the pasted area. Empty box: unmixed."""
    height, width = x.shape[-2:]
    mask = box_mask(top, left, box_h, box_w, height, width, x.dtype)  # (B, 1, H, W) of 0/1
    partners = torch.index_select(x, 0, partner, out=scratch(workspace, "partners", tuple(x.shape), x))
    pasted = torch.lerp(x, partners, mask)  # exact: weight 1 takes the partner's pixel, 0 keeps x
    kept = 1.0 - (box_h * box_w).to(y.dtype) / (height * width)  # (B,) share of the sample's own pixels
    return pasted, torch.lerp(y[partner], y, kept[:, None])
