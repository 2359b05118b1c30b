"""Activation memory measured from a real forward pass, not from a formula.

`profile_activations` runs one forward (and the loss) under torch.autograd.graph.saved_tensors_hooks and
records, in forward order, every tensor autograd keeps for backward (counted once per storage, parameters
excluded) and the point where each parameter is used for the last time. Backward visits that timeline in
reverse: an op's parameter gradients appear while its saved inputs are still alive, then those inputs
are freed. Replaying it gives the most bytes alive at once during backward, which is what a device must
hold beyond parameters and optimizer state (activations and gradients take turns rather than add up).

The forward runs on CPU with micro-batches of 1 and 2 samples; saved bytes are extrapolated linearly to
the real micro-batch (they are affine in the batch size for these models).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from behemoth.distributed.blocks import model_blocks


@dataclass
class Timeline:
    """Forward-order events: ("save", bytes), ("grad", bytes), ("enter", block, input bytes),
    ("leave", block)."""

    events: list[tuple] = field(default_factory=list)
    output_bytes: int = 0  # the loss input (logits): its gradient is the first thing backward allocates

    def saved(self) -> int:
        return sum(e[1] for e in self.events if e[0] == "save")


def record_timeline(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> Timeline:
    """One forward + loss of `model` on (x, y), recorded (see the module docstring)."""
    params = {p.untyped_storage()._cdata: p for p in model.parameters()}
    timeline, seen, last_use = Timeline(), set(), {}
    blocks = {id(b): i for i, b in enumerate(model_blocks(model))}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in params and storage._cdata not in seen:
            seen.add(storage._cdata)
            timeline.events.append(("save", storage.nbytes()))
        return tensor

    def pre(module: nn.Module, args: tuple) -> None:
        if id(module) in blocks:
            size = sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))
            timeline.events.append(("enter", blocks[id(module)], size))

    def post(module: nn.Module, args: tuple, output) -> None:
        for param in module.parameters(recurse=False):
            last_use[id(param)] = len(timeline.events)  # its gradient is made when backward gets back here
            timeline.events.append(("use", id(param)))
        if id(module) in blocks:
            timeline.events.append(("leave", blocks[id(module)]))

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(x)
            loss_fn(output, y)
    finally:
        for handle in handles:
            handle.remove()
    timeline.output_bytes = output.numel() * 4  # the loss works in float32
    sizes = {id(p): p.numel() * p.element_size() for p in params.values()}
    timeline.events = [
        ("grad", sizes[e[1]]) if e[0] == "use" and last_use.get(e[1]) == i else e
        for i, e in enumerate(timeline.events)
        if e[0] != "use" or last_use.get(e[1]) == i
    ]
    return timeline


def extrapolate(one: Timeline, two: Timeline, batch: int) -> Timeline:
    """The timeline at `batch` samples from those at 1 and 2 samples (same events, sizes affine in batch)."""
    if [e[0] for e in one.events] != [e[0] for e in two.events]:
        raise ValueError("the forward pass records different events at batch 1 and 2: cannot extrapolate")

    def scale(a: int, b: int) -> int:
        return max(0, a + (b - a) * (batch - 1))

    events = []
    for a, b in zip(one.events, two.events):
        if a[0] in ("save", "enter"):
            events.append((*a[:-1], scale(a[-1], b[-1])))
        else:
            events.append(a)
    return Timeline(events, scale(one.output_bytes, two.output_bytes))


def backward_peak(timeline: Timeline, checkpointed: bool = False, grad_fraction: float = 1.0) -> int:
    """Most bytes of activations + gradients alive at once in backward (parameters excluded), plus the
    working space of the largest op.

    `checkpointed`: blocks keep only their input; backward recomputes one block's activations at a time.
    `grad_fraction`: the share of each gradient a rank keeps (FSDP: 1 / world size, after reduce-scatter).
    """
    inside, block_saved = None, {}
    for event in timeline.events:  # bytes saved inside each block
        if event[0] == "enter":
            inside = event[1]
            block_saved.setdefault(inside, 0)
        elif event[0] == "leave":
            inside = None
        elif event[0] == "save" and inside is not None:
            block_saved[inside] += event[1]
    kept = timeline.saved() - (sum(block_saved.values()) if checkpointed else 0)
    if checkpointed:
        kept += sum(e[2] for e in timeline.events if e[0] == "enter")
    live = peak = kept + timeline.output_bytes
    inside = None
    for event in reversed(timeline.events):
        kind = event[0]
        if kind == "leave":
            inside = event[1]
            if checkpointed:  # recompute this block's forward: its activations are back
                live += block_saved[inside]
        elif kind == "enter":
            inside = None
            if checkpointed:
                live -= event[2]
        elif kind == "grad":
            live += int(event[1] * grad_fraction)
        elif kind == "save":
            live -= event[1]
        peak = max(peak, live)
    # working space of one op's backward (the gradients of its inputs, made while they are alive): about
    # the largest tensor it saved (calibrated against measured peaks; see tests/test_plan.py)
    return peak + max((e[1] for e in timeline.events if e[0] == "save"), default=0)


def profile_activations(
    model: nn.Module,
    example: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    batch: int,
    loss_fn: Callable,
) -> Timeline:
    """The forward timeline of `model` at `batch` samples, from real forwards at 1 and 2 samples on CPU.

    `example(n)` returns (x, y) with n samples. The model is put in train mode (dropout, batch norm as in
    training).
    """
    model.train()
    one = record_timeline(model, *example(1), loss_fn)
    two = record_timeline(model, *example(2), loss_fn)
    return extrapolate(one, two, batch)
