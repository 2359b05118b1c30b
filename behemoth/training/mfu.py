"""Model FLOPs utilisation (MFU): the FLOPs the model needs per second, over the matmul peak of this machine.

Model FLOPs per token of training (forward + backward), after PaLM (Chowdhery et al. 2022, appendix B) and
nanoGPT's estimate_mfu:
    6 * N + 12 * L * T * C
N = parameters that enter a matrix multiply (all, less embedding tables used only as look-ups: a GPT's
position embedding; its token embedding counts, because the tied lm_head multiplies by it). Each such
weight costs 2 FLOPs per token forward and 4 backward. The attention term: per layer, QK^T and AV take
2 * T * C multiply-adds each per token (4 T C FLOPs forward, x3 with backward), counting the full T x T
score matrix even though causal masking could skip half (the usual convention). Recomputation
(activation checkpointing) is not model FLOPs and is not counted: MFU, not hardware utilisation.

The peak is measured, not looked up: a short matmul timing (F.linear) at the start of the run, in the run's
dtype and with its threads, on the same (shared, noisy) machine. Its random matrices come from a generator
of their own, so measuring never moves the training run's RNG streams.
"""

import time
from typing import Any

import torch
from torch import nn

from behemoth.spec import DataSpec
from behemoth.training.hooks import BaseHook
from behemoth.training.precision import PARAM_DTYPES

_CONV_TYPES = (nn.modules.conv._ConvNd,)


def matmul_peak_flops(
    dtype: torch.dtype = torch.float32,
    device: torch.device = torch.device("cpu"),
    size: int = 1024,
    min_seconds: float = 0.25,
    min_repeats: int = 5,
) -> float:
    """The best FLOP/s of an (size x size) @ (size x size)^T product over repeated timings (2 size^3 FLOPs
    each), taken as F.linear takes it, the layout nn.Linear runs: on an AVX2 CPU without bf16 instructions
    a bf16 torch.mm(a, b) ran at 0.96 GFLOP/s where F.linear(a, b) ran at 17, so a plain mm understated the
    peak twenty-fold there."""
    # A generator of its own: drawing from the global one would shift the training run's dropout stream,
    # and only in a resumed run (the hook starts after the checkpoint's RNG state is restored).
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.nn.functional.linear(a, b)  # warm-up: first call pays for kernel selection and page faults
    sync()
    best, started, repeats = 0.0, time.perf_counter(), 0
    while repeats < min_repeats or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        torch.nn.functional.linear(a, b)
        sync()
        best = max(best, 2 * size**3 / (time.perf_counter() - t0))
        repeats += 1
    return best


def matmul_parameters(model: nn.Module) -> int:
    """Parameters that take part in a matrix multiply: all, less embedding tables that are only looked up."""
    lookup_only = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    lookup_only -= {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}  # tied lm_head
    seen, total = set(), 0
    for param in model.parameters():  # .parameters() yields a tied tensor once
        if id(param) not in seen and id(param) not in lookup_only:
            total += param.numel()
        seen.add(id(param))
    return total


def attention_widths(model: nn.Module) -> list[int]:
    """The width C of every behemoth self-attention layer (its qkv projection's input)."""
    from behemoth.models.transformer_blocks import SelfAttention

    return [m.qkv.in_features for m in model.modules() if isinstance(m, SelfAttention)]


def train_flops_per_sample(model: nn.Module, spec: DataSpec) -> float | None:
    """Forward + backward model FLOPs for one training sample, or None where the formula does not hold.

    Language models: T tokens of 6 N + 12 T C per attention layer. Other dense models: 6 N per sample.
    Convolutions reuse their weights at every position (N says nothing about their cost): None.
    """
    if any(isinstance(m, _CONV_TYPES) for m in model.modules()):
        return None
    positions = spec.input_shape[0] if spec.task == "language_model" else 1
    attention = sum(12 * positions * width for width in attention_widths(model)) if positions > 1 else 0
    return positions * (6 * matmul_parameters(model) + attention)


def compute_dtype(cfg: Any) -> torch.dtype:
    """The dtype the matmuls of a run execute in: the autocast dtype, else the parameters' storage dtype."""
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision == "fp16":
        return torch.float16
    return PARAM_DTYPES[getattr(cfg, "param_dtype", "fp32")]


class MFUHook(BaseHook):
    """Adds `mfu`, `model_gflops` (achieved) and `peak_gflops` to every logged training record.

    Put it before the logging hooks: they print and write the metrics dict this hook fills in.
    The time spent validating and checkpointing is left out of the rate.
    """

    def __init__(self, flops_per_sample: float, world_size: int = 1) -> None:
        self.flops_per_sample = flops_per_sample
        self.world_size = world_size  # samples_seen counts every rank's samples; each rank has its own peak
        self.peak = 0.0

    def on_train_start(self, ctx: Any) -> None:
        self.peak = matmul_peak_flops(compute_dtype(ctx.cfg), ctx.device) * self.world_size
        self._start_window(ctx.samples_seen)
        self.last_mark = time.perf_counter()

    def _start_window(self, samples: int) -> None:
        self.window_start, self.window_samples, self.excluded = time.perf_counter(), samples, 0.0

    def _pause(self) -> None:  # after an evaluation or a checkpoint: its time is not training time
        now = time.perf_counter()
        self.excluded += now - self.last_mark
        self.last_mark = now

    def on_eval_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        self._pause()

    def on_checkpoint(self, ctx: Any, path: Any) -> None:
        self._pause()

    def on_step_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        self.last_mark = time.perf_counter()
        if ctx.step % ctx.cfg.log_every and ctx.step != ctx.total_steps:
            return
        seconds = max(self.last_mark - self.window_start - self.excluded, 1e-9)
        achieved = (ctx.samples_seen - self.window_samples) * self.flops_per_sample / seconds
        metrics.update(
            {"mfu": achieved / self.peak, "model_gflops": achieved / 1e9, "peak_gflops": self.peak / 1e9}
        )
        self._start_window(ctx.samples_seen)


def mfu_hooks(model: nn.Module, spec: DataSpec, world_size: int = 1) -> list[MFUHook]:
    """[MFUHook] for a language model whose FLOPs the formula covers, else [] (no peak timing to pay for)."""
    flops = train_flops_per_sample(model, spec) if spec.task == "language_model" else None
    return [MFUHook(flops, world_size)] if flops else []
