"""What compression is judged by, measured rather than estimated: bytes on disk, parameters and nonzeros
(int8 and packed weights included), test accuracy, CPU latency at batch 1 and 256, and for language models
perplexity and decode tokens/s.

Latencies of several models are measured interleaved (one round of every model, repeated) and reported
as medians, so a noisy shared machine slows every model alike instead of whichever ran last.
"""

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from behemoth.compression.weight_only import WEIGHT_ONLY_TYPES
from behemoth.data.bundle import TensorSplit
from behemoth.models.hf_generate import hf_generate, is_hf_causal
from behemoth.models.sampling import has_cache, sample, sample_cached
from behemoth.spec import DataSpec
from behemoth.training.metrics import evaluate


def file_bytes(path: str | Path) -> int:
    """The size the artifact really takes: its bytes on disk."""
    return Path(path).stat().st_size


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter of `model` as a float tensor, int8 packed weights (torch.ao modules) included."""
    tensors = [p.detach() for p in model.parameters()]
    for module in model.modules():
        if isinstance(module, WEIGHT_ONLY_TYPES):  # int8/int4 weights in buffers
            tensors.append(module.dequantized())
            if module.bias is not None:
                tensors.append(module.bias)
            continue
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if callable(weight) and callable(bias) and hasattr(module, "_packed_params"):  # quantized Linear/Conv
            tensors.append(weight().dequantize())
            if bias() is not None:
                tensors.append(bias().detach())
    return tensors


def count_parameters(model: nn.Module) -> int:
    return sum(t.numel() for t in weight_tensors(model))


def count_nonzeros(model: nn.Module) -> int:
    return sum(int((t != 0).sum()) for t in weight_tensors(model))


def accuracy(
    model: nn.Module, split: TensorSplit, spec: DataSpec, batch_size: int = 1000
) -> dict[str, float]:
    """Test loss, accuracy, error and error count on `split` (fp32 or int8, on the CPU); a language model's
    accuracy is next-token accuracy, and it gets its perplexity too."""
    with torch.inference_mode():
        result = evaluate(model, split, spec, batch_size, "fp32", torch.device("cpu"))
    errors = round((1.0 - result["acc"]) * len(split))
    out = {"loss": result["loss"], "acc": result["acc"], "error": 1.0 - result["acc"], "errors": errors}
    if "perplexity" in result:
        out["perplexity"] = result["perplexity"]
    return out


def latencies(
    models: dict[str, nn.Module],
    example: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 256),
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, dict[int, float]]:
    """Median forward time in milliseconds, {model: {batch: ms}}, measured interleaved on the CPU.

    `example` holds at least max(batch_sizes) samples (repeated if fewer).
    """
    inputs = {}
    for batch in batch_sizes:
        reps = -(-batch // len(example))
        inputs[batch] = example.repeat(reps, *[1] * (example.ndim - 1))[:batch].contiguous()
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batch_sizes} for name in models}
    for model in models.values():
        model.eval()
    with torch.inference_mode():
        for round_index in range(warmup + repeats):
            for name, model in models.items():
                for batch, x in inputs.items():
                    start = time.perf_counter()
                    model(x)
                    elapsed = time.perf_counter() - start
                    if round_index >= warmup:
                        times[name][batch].append(elapsed * 1000)
    return {name: {b: statistics.median(v) for b, v in per.items()} for name, per in times.items()}


def decode_speeds(
    models: dict[str, nn.Module], prompt: torch.Tensor, new_tokens: int, repeats: int = 3
) -> dict[str, float]:
    """Greedy decode tokens/s at batch 1 of each language model (KV cache where it has one: a Hugging Face
    model's through transformers' generate), {model: tok/s}:
    new tokens over the wall time of the whole call, median of interleaved rounds after one warm-up."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for round_index in range(repeats + 1):
            for name, model in models.items():
                start = time.perf_counter()
                if is_hf_causal(model):  # transformers' generate with its own KV cache
                    hf_generate(model, prompt, new_tokens, temperature=0)
                else:
                    run = sample_cached if has_cache(model) else sample
                    run(model, prompt, new_tokens, temperature=0)
                if round_index:
                    times[name].append(time.perf_counter() - start)
    return {name: new_tokens / statistics.median(t) for name, t in times.items()}


def summary_row(
    step: str,
    model: nn.Module,
    path: Path,
    baseline_bytes: int,
    test: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One line of the before/after table (latencies are filled in later, measured together)."""
    size = file_bytes(path)
    return {
        "step": step,
        "file": str(path),
        "parameters": count_parameters(model),
        "nonzeros": count_nonzeros(model),
        "bytes": size,
        "compression": baseline_bytes / size,
        "acc": test["acc"],
        "error": test["error"],
        "errors": test["errors"],
        "loss": test["loss"],
        **({"perplexity": test["perplexity"]} if "perplexity" in test else {}),
        **(extra or {}),
    }
