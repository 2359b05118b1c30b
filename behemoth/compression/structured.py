"""Structured pruning: remove whole hidden units (Linear rows) and channels (conv filters), and rewire the
layer that reads them, so the model really has fewer parameters and runs faster on dense kernels.

Which layer feeds which is read from the model's torch.fx graph: a producer (Linear/Conv) whose output
reaches exactly one consumer (Linear/Conv) through per-channel ops only (activations, dropout, pooling,
batch norm, flatten). Units are ranked by the L1 norm of their weights (Li et al. 2017, "Pruning Filters
for Efficient ConvNets"), scaled by the batch norm's gain where one sits between.
"""

from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from behemoth.errors import BehemothError

PRODUCERS = (nn.Linear, nn.Conv2d)
PASSTHROUGH = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.ELU,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Identity,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class UnitPair:
    """`producer`'s output units feed `consumer`'s inputs; each unit spans `span` consumer inputs
    (the spatial size when a conv's channels are flattened into a Linear layer)."""

    producer: str
    consumer: str
    norms: list[str]
    span: int


def find_unit_pairs(model: nn.Module, example: torch.Tensor) -> list[UnitPair]:
    """Producer -> consumer pairs whose units can be removed without touching anything else."""
    try:
        graph = torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types on dynamic control flow; report the model, not fx
        raise BehemothError(
            f"structured pruning: cannot trace {type(model).__name__} with torch.fx: {exc}"
        ) from None
    ShapeProp(graph).propagate(example)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], PRODUCERS):
            continue
        if isinstance(modules[node.target], nn.Conv2d) and modules[node.target].groups != 1:
            continue
        norms, span, current = [], 1, node
        while len(current.users) == 1:
            user = next(iter(current.users))
            if user.op == "call_module" and isinstance(modules[user.target], PRODUCERS):
                consumer = modules[user.target]
                if isinstance(consumer, nn.Conv2d) and consumer.groups != 1:
                    break
                if (
                    isinstance(consumer, nn.Linear)
                    and current.meta["tensor_meta"].shape[-1] != consumer.in_features
                ):
                    break
                pairs.append(UnitPair(node.target, user.target, norms, span))
                break
            if user.op == "call_module" and isinstance(modules[user.target], PASSTHROUGH):
                if isinstance(modules[user.target], NORMS):
                    norms.append(user.target)
            elif is_flatten(user, modules):
                shape = current.meta["tensor_meta"].shape  # (B, C, H, W) -> (B, C*H*W): a channel spans H*W
                span *= int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1
            else:
                break
            current = user
    return pairs


def is_flatten(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten:
        return node.args[1:2] == (1,) and len(node.args) <= 2 and not node.kwargs
    return False


def unit_importance(producer: nn.Module, norms: list[nn.Module]) -> torch.Tensor:
    """(units,) L1 norm of each unit's weights, times |gamma / sqrt(var + eps)| of any batch norm after it."""
    score = producer.weight.detach().abs().flatten(1).sum(1)
    for norm in norms:
        if norm.affine:
            score = score * (norm.weight.detach().abs() / torch.sqrt(norm.running_var + norm.eps))
    return score


def prune_units(model: nn.Module, amount: float, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Remove `amount` of the units of every prunable producer (in place); returns
    {layer: (before, after)}."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount = {amount}: expected a fraction in [0, 1)")
    was_training = model.training
    model.eval()
    pairs = find_unit_pairs(model, example)
    if not pairs:
        raise BehemothError(
            f"structured pruning: {type(model).__name__} has no layer whose units feed "
            "exactly one Linear/Conv layer through per-unit ops; nothing can be removed"
        )
    modules = dict(model.named_modules())
    keep_out: dict[str, torch.Tensor] = {}  # producer -> sorted unit indices kept
    keep_in: dict[str, torch.Tensor] = {}  # consumer -> sorted input indices kept
    changes = {}
    for pair in pairs:
        producer = modules[pair.producer]
        score = unit_importance(producer, [modules[n] for n in pair.norms])
        units = score.numel()
        kept = torch.sort(torch.topk(score, max(1, round(units * (1.0 - amount)))).indices).values
        keep_out[pair.producer] = kept
        for norm in pair.norms:
            keep_out[norm] = kept
        # each kept unit u keeps the consumer inputs [u*span, (u+1)*span)
        keep_in[pair.consumer] = (kept[:, None] * pair.span + torch.arange(pair.span)).flatten()
        changes[pair.producer] = (units, kept.numel())
    for name in set(keep_out) | set(keep_in):
        replace_module(model, name, sliced(modules[name], keep_out.get(name), keep_in.get(name)))
    model.train(was_training)
    return changes


def sliced(module: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
    """A new module holding only the kept output units / input features of `module`."""
    with torch.no_grad():
        if isinstance(module, NORMS):
            new = type(module)(
                len(out_idx), module.eps, module.momentum, module.affine, module.track_running_stats
            )
            for key in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, key) is not None:
                    getattr(new, key).copy_(getattr(module, key)[out_idx])
            if module.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(module.num_batches_tracked)
            return new.to(module.weight.device if module.affine else module.running_mean.device)
        weight = module.weight
        if out_idx is not None:
            weight = weight[out_idx]
        if in_idx is not None:
            weight = weight[:, in_idx]
        bias = None if module.bias is None else (module.bias[out_idx] if out_idx is not None else module.bias)
        if isinstance(module, nn.Linear):
            new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            new = nn.Conv2d(
                weight.shape[1],
                weight.shape[0],
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                1,
                bias is not None,
                module.padding_mode,
            )
        new = new.to(device=weight.device, dtype=weight.dtype)
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
        return new


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def resize_to_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> None:
    """Rebuild Linear/Conv/BatchNorm layers whose saved weight shapes differ (a structurally pruned model),
    so the state dict of the pruned model loads into a freshly built one."""
    for name, module in list(model.named_modules()):
        shape = shapes.get(f"{name}.weight") or shapes.get(f"{name}.running_mean")
        if shape is None:
            continue
        if isinstance(module, NORMS) and shape[0] != module.num_features:
            replace_module(
                model,
                name,
                type(module)(
                    shape[0], module.eps, module.momentum, module.affine, module.track_running_stats
                ),
            )
        elif isinstance(module, nn.Linear) and list(module.weight.shape) != shape:
            replace_module(model, name, nn.Linear(shape[1], shape[0], bias=module.bias is not None))
        elif isinstance(module, nn.Conv2d) and list(module.weight.shape) != shape:
            replace_module(
                model,
                name,
                nn.Conv2d(
                    shape[1],
                    shape[0],
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    module.dilation,
                    1,
                    module.bias is not None,
                    module.padding_mode,
                ),
            )
