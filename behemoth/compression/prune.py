"""Unstructured magnitude pruning: layer-wise or global masks, the cubic gradual schedule of Zhu & Gupta
(2017, "To prune, or not to prune"), and a hook that tightens the masks while the engine retrains.

Masks are applied through torch.nn.utils.prune (`weight = weight_orig * weight_mask` in a forward
pre-hook), so pruned weights get zero gradient and stay zero through every optimizer step; `make_permanent`
folds the masks into plain weights afterwards.
"""

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from behemoth.training.hooks import BaseHook

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and conv layers by qualified name; a weight shared with another module (tied) is left out."""
    layers, owners = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            layers[name] = module
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners[id(param)] = owners.get(id(param), 0) + 1
    return {name: m for name, m in layers.items() if owners.get(id(current_weight(m)), 1) == 1}


def current_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer computes with (weight_orig * mask while a pruning mask is attached)."""
    if torch_prune.is_pruned(module) and hasattr(module, "weight_orig"):
        return module.weight_orig * module.weight_mask
    return module.weight


def keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """A 0/1 mask (same shape) keeping the `keep` largest scores; exact count, ties broken by position."""
    mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.flatten(), keep, sorted=False).indices] = 1
    return mask.view_as(scores)


def magnitude_masks(
    weights: dict[str, torch.Tensor],
    sparsity: float,
    scope: str = "layer",
    layer_sparsity: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks that zero the smallest |w|: `sparsity` of each layer ("layer") or of all weights together
    ("global", one threshold). Layers named in `layer_sparsity` get their own fraction in both scopes."""
    layer_sparsity = dict(layer_sparsity or {})
    unknown = set(layer_sparsity) - set(weights)
    if unknown:
        raise ValueError(
            f"layer_sparsity names unknown layers {sorted(unknown)} (prunable: {sorted(weights)})"
        )
    masks = {
        name: keep_top(w.abs(), w.numel() - round(layer_sparsity[name] * w.numel()))
        for name, w in weights.items()
        if name in layer_sparsity
    }
    rest = {name: w for name, w in weights.items() if name not in layer_sparsity}
    if scope == "layer":
        masks.update(
            {name: keep_top(w.abs(), w.numel() - round(sparsity * w.numel())) for name, w in rest.items()}
        )
    elif rest:
        flat = torch.cat([w.abs().flatten() for w in rest.values()])  # (total weights,)
        kept = keep_top(flat, flat.numel() - round(sparsity * flat.numel()))
        for name, chunk in zip(rest, torch.split(kept, [w.numel() for w in rest.values()])):
            masks[name] = chunk.view_as(rest[name])
    return masks


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Attach (or replace) each layer's pruning mask; the forward then uses weight_orig * mask."""
    for name, mask in masks.items():
        module = layers[name]
        mask = mask.to(device=current_weight(module).device, dtype=current_weight(module).dtype)
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            module.weight_mask.copy_(mask)
        else:
            torch_prune.custom_from_mask(module, "weight", mask)


def prune_magnitude(
    model: nn.Module,
    sparsity: float,
    scope: str = "layer",
    layer_sparsity: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Zero the smallest weights of `model`'s Linear/Conv layers (masks stay attached); returns the masks."""
    layers = prunable_layers(model)
    with torch.no_grad():
        masks = magnitude_masks(
            {n: current_weight(m).detach() for n, m in layers.items()}, sparsity, scope, layer_sparsity
        )
    apply_masks(layers, masks)
    return masks


def make_permanent(model: nn.Module) -> None:
    """Fold every attached mask into a plain weight parameter (zeros stay zeros, no hooks left)."""
    for module in model.modules():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_orig"):
            torch_prune.remove(module, "weight")


def cubic_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta: s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t_end - t0))^3, flat before t0 and after t_end.

    Prunes fast while many redundant weights remain, then slowly as fewer are left.
    """
    if step <= begin:
        return initial
    if step >= end:
        return final
    progress = (step - begin) / (end - begin)
    return final + (initial - final) * (1.0 - progress) ** 3


def sparsity_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per prunable layer: weights, zeros and sparsity (what the CLI prints under the table)."""
    report = {}
    for name, module in prunable_layers(model).items():
        weight = current_weight(module).detach()
        zeros = int((weight == 0).sum())
        report[name] = {"weights": weight.numel(), "zeros": zeros, "sparsity": zeros / max(weight.numel(), 1)}
    return report


class GradualPruning(BaseHook):
    """Tightens the masks every `every` optimizer steps along the cubic schedule, reaching `sparsity`
    at step `end` of the retraining, then keeps the masks fixed while the rest of the retraining recovers."""

    def __init__(
        self,
        sparsity: float,
        scope: str,
        end: int,
        every: int,
        layer_sparsity: dict[str, float] | None = None,
    ) -> None:
        self.sparsity, self.scope, self.end, self.every = sparsity, scope, max(end, 1), max(every, 1)
        self.layer_sparsity = dict(layer_sparsity or {})
        self.history: list[tuple[int, float]] = []  # (step, target sparsity) at every mask update

    def _prune_to(self, model: nn.Module, step: int) -> None:
        fraction = cubic_sparsity(step, 1.0, 0, self.end)  # share of the way to every final target
        target = self.sparsity * fraction
        per_layer = {name: amount * fraction for name, amount in self.layer_sparsity.items()}
        prune_magnitude(model, target, self.scope, per_layer)
        self.history.append((step, target))

    # each update prunes to the schedule's value one interval ahead, so the final sparsity holds from `end` on
    def on_train_start(self, ctx: Any) -> None:
        self._prune_to(ctx.model, min(self.every, self.end))

    def on_step_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        if ctx.step % self.every == 0 and ctx.step < self.end:
            self._prune_to(ctx.model, min(ctx.step + self.every, self.end))


def default_prune_every(steps_per_epoch: int) -> int:
    """About eight mask updates per epoch: smooth enough, and cheap (one top-k per update)."""
    return max(1, math.ceil(steps_per_epoch / 8))
