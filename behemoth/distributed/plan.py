"""The memory plan: bytes per rank for each way to train a model, and the fastest way that fits.

Per rank, for N processes and a micro-batch of b = data.batch_size / N / k samples (k: extra accumulation):

- parameters P (counted), gradients (as many as parameters), optimizer state (slots per parameter by
  optimizer: sgd with momentum 1, adam/adamw 2, ...; 8-bit Adam 2 one-byte slots);
- activations and their interplay with gradients in backward, measured from a real forward pass
  (behemoth.distributed.activations), with and without activation checkpointing;
- ddp: everything replicated, plus DDP's gradient buckets (a second copy of the gradients);
  fsdp: parameters, gradients and optimizer state divided by N, plus the working set (the parameters
  outside blocks and two blocks' parameters gathered at once, as fully_shard's prefetch holds them);
  fsdp+offload: the shards live in CPU memory, the device holds the working set and activations.

The peak is parameters + optimizer state (held between steps) + the larger of the backward peak and
the optimizer step's (gradients + its temporaries). The speed order used to recommend (fastest first)
is a rule of thumb, not a measurement: DDP; FSDP (its gathers overlap compute on one machine); more
gradient accumulation (same arithmetic on smaller micro-batches); activation checkpointing (one more
forward per block, ~+33% compute); CPU offload last (parameters and optimizer work over PCIe).
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from behemoth.config.optimizers import optimizer_entry
from behemoth.distributed.activations import Timeline, backward_peak, extrapolate, record_timeline
from behemoth.distributed.blocks import model_blocks

STRATEGIES = ("single", "ddp", "fsdp", "fsdp+offload")


@dataclass(frozen=True)
class ModelFacts:
    """What the plan needs to know about a model, measured once."""

    param_bytes: int  # all parameters (tied weights once)
    param_element: int  # bytes per parameter value
    largest_param: int  # bytes of the largest parameter (the optimizer step's temporaries on CPU)
    block_bytes: int  # the largest block's parameters (FSDP gathers one or two at a time)
    root_bytes: int  # parameters outside the blocks (FSDP keeps them gathered around forward/backward)
    one: Timeline  # forward timelines at 1 and 2 samples per rank (activations extrapolate from them)
    two: Timeline


@dataclass(frozen=True)
class Estimate:
    strategy: str
    checkpointing: bool
    accumulate: int  # extra accumulation k (micro-batch divided by k)
    micro_batch: int  # samples per rank per micro-batch
    params: int
    grads: int
    optimizer: int
    activations: int  # bytes saved for backward over one micro-batch
    peak: int  # device bytes per rank at the busiest moment of a step
    host: int  # CPU bytes per rank (offloaded shards)

    @property
    def label(self) -> str:
        return (
            self.strategy
            + ("+ac" if self.checkpointing else "")
            + (f"+accumulate x{self.accumulate}" if self.accumulate > 1 else "")
        )


def measure_model(
    model: nn.Module, example: Callable[[int], tuple[torch.Tensor, torch.Tensor]], loss_fn: Callable
) -> ModelFacts:
    """Count `model`'s parameters and record its forward (in train mode) at 1 and 2 samples."""
    params = list(model.parameters())
    blocks = model_blocks(model)
    block_bytes = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks]
    total = sum(p.numel() * p.element_size() for p in params)
    model.train()
    one, two = record_timeline(model, *example(1), loss_fn), record_timeline(model, *example(2), loss_fn)
    return ModelFacts(
        param_bytes=total,
        param_element=params[0].element_size() if params else 4,
        largest_param=max((p.numel() * p.element_size() for p in params), default=0),
        block_bytes=max(block_bytes, default=0),
        root_bytes=total - sum(block_bytes),
        one=one,
        two=two,
    )


def optimizer_bytes(facts: ModelFacts, optimizer: str, **options) -> int:
    """Optimizer state bytes from the registry's slots (behemoth.config.optimizers), so every optimizer the
    config accepts has a plan. `options`: the TrainConfig values its slots depend on (momentum, centered)."""
    entry = optimizer_entry(optimizer)
    values = facts.param_bytes // facts.param_element
    return int(entry.state_slots(**options) * values * (entry.bytes_per_value or facts.param_element))


def estimate(
    facts: ModelFacts,
    strategy: str,
    world: int,
    batch: int,
    optimizer: int,
    checkpointing: bool = False,
    accumulate: int = 1,
    device: str = "cuda",
) -> Estimate:
    """Bytes per rank for one way to train (see the module docstring). `batch`: the global micro-batch."""
    ranks = 1 if strategy == "single" else world
    micro = max(1, batch // ranks // accumulate)
    timeline = extrapolate(facts.one, facts.two, micro)
    P, optim_bytes = facts.param_bytes, optimizer
    # the optimizer step: gradients plus temporaries (foreach kernels on CUDA: all parameters at once)
    temporaries = P if device == "cuda" else facts.largest_param
    if strategy in ("single", "ddp"):
        buckets = P if strategy == "ddp" else 0  # DDP's reduction buckets: a second copy of the gradients
        params, grads, opt, host = P, P + buckets, optim_bytes, 0
        working = buckets
        step = P + temporaries
        grad_fraction = 1.0
    else:
        gathered = facts.root_bytes + 2 * facts.block_bytes  # unsharded while blocks run (and their grads)
        offload = strategy == "fsdp+offload"
        params, grads, opt = (0, 0, 0) if offload else (P // ranks, P // ranks, optim_bytes // ranks)
        host = (2 * P + optim_bytes) // ranks if offload else 0
        working = gathered + facts.block_bytes  # + one block's unsharded gradients before reduce-scatter
        step = 0 if offload else (P + temporaries) // ranks
        grad_fraction = 0.0 if offload else 1.0 / ranks
    backward = backward_peak(timeline, checkpointing and has_blocks(timeline), grad_fraction)
    peak = params + opt + working + max(backward, step)
    saved = timeline.saved() if not checkpointing else _checkpointed_saved(timeline)
    return Estimate(strategy, checkpointing, accumulate, micro, params, grads, opt, saved, peak, host)


def has_blocks(timeline: Timeline) -> bool:
    return any(e[0] == "enter" for e in timeline.events)


def _checkpointed_saved(timeline: Timeline) -> int:
    """Bytes kept from forward to backward with checkpointed blocks: outside the blocks + each block's
    input."""
    inside, outside, inputs = False, 0, 0
    for event in timeline.events:
        if event[0] == "enter":
            inside, inputs = True, inputs + event[2]
        elif event[0] == "leave":
            inside = False
        elif event[0] == "save" and not inside:
            outside += event[1]
    return outside + inputs


def plan(
    facts: ModelFacts, world: int, batch: int, optimizer: int, memory: int, device: str = "cuda"
) -> tuple[list[Estimate], Estimate | None]:
    """Every strategy with and without checkpointing (accumulation x1), and the fastest option that fits
    in `memory` bytes per rank, allowing extra gradient accumulation (None: nothing fits)."""
    strategies = ["single"] + (["ddp", "fsdp", "fsdp+offload"] if world > 1 else [])
    can_checkpoint = has_blocks(facts.one)
    rows = [
        estimate(facts, s, world, batch, optimizer, ac, 1, device)
        for s in strategies
        for ac in ([False, True] if can_checkpoint else [False])
    ]
    per_rank = batch // (1 if world == 1 else world)
    accumulations = [k for k in range(1, per_rank + 1) if per_rank % k == 0]
    fast = "single" if world == 1 else "ddp"
    order = [
        (fast, False),
        ("fsdp", False),
        (fast, False, "k"),
        ("fsdp", False, "k"),
        (fast, True),
        ("fsdp", True),
        (fast, True, "k"),
        ("fsdp", True, "k"),
        ("fsdp+offload", False, "k"),
        ("fsdp+offload", True, "k"),
    ]
    for strategy, ac, *more in order:
        if (strategy not in strategies) or (ac and not can_checkpoint):
            continue
        for k in accumulations if more else [1]:
            option = estimate(facts, strategy, world, batch, optimizer, ac, k, device)
            if option.peak <= memory:
                return rows, option
    return rows, None


def human(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def example_batch(
    task: str, input_shape: tuple[int, ...]
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """n samples shaped like the data (values do not matter for memory): images/features or token ids."""

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if task == "language_model":
            tokens = torch.zeros((n, *input_shape), dtype=torch.long)
            return tokens, tokens
        return torch.randn((n, *input_shape)), torch.zeros(n, dtype=torch.long)

    return make


def overrides_for(option: Estimate, batch: int, accumulate: int) -> list[str]:
    """The config overrides that train the way `option` says (same samples per optimizer step)."""
    out = [f"train.strategy={option.strategy.split('+')[0]}"]
    if option.strategy == "fsdp+offload":
        out.append("train.fsdp_offload=true")
    if option.checkpointing:
        out.append("train.activation_checkpointing=true")
    if option.accumulate > 1:
        out += [
            f"data.batch_size={batch // option.accumulate}",
            f"train.accumulate={accumulate * option.accumulate}",
        ]
    return out


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Attention measured as CUDA's fused kernels store it when planning for CUDA on a machine without one.

    CUDA's flash / memory-efficient attention keep O(T) per head even with dropout; CPU's fused kernel has
    no dropout and falls back to the math path, which stores the T x T weights. Without dropout both
    store the same, so the measurement drops attention dropout (its masks are not stored on CUDA either).
    """
    original = F.scaled_dot_product_attention

    def without_dropout(*args, dropout_p: float = 0.0, **kwargs):
        return original(*args, dropout_p=0.0, **kwargs)

    F.scaled_dot_product_attention = without_dropout
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
