"""Evaluation: loss and accuracy every epoch; precision, recall, F1 (macro and per class) and the
confusion matrix from torchmetrics when a full report is asked for."""

import math
import resource
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from behemoth.data.bundle import TensorSplit
from behemoth.distributed import DistEnv, all_reduce_sum, shard_rows
from behemoth.spec import DataSpec
from behemoth.training.batching import eval_batches
from behemoth.training.precision import autocast


def task_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for classification (B, K) and for next-token prediction (B, T, V)."""
    if logits.ndim == 3:  # (B, T, V) -> (B*T, V)
        logits, targets = logits.flatten(0, 1), targets.flatten()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def _detailed_metrics(num_classes: int) -> dict[str, Any]:
    # imported here: torchmetrics loads scipy and (when installed) transformers, ~2.5 s that every
    # training process would pay at start for metrics only the full report uses
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    return {
        "precision_macro": MulticlassPrecision(num_classes, average="macro"),
        "recall_macro": MulticlassRecall(num_classes, average="macro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        "precision_per_class": MulticlassPrecision(num_classes, average="none"),
        "recall_per_class": MulticlassRecall(num_classes, average="none"),
        "f1_per_class": MulticlassF1Score(num_classes, average="none"),
        "confusion_matrix": MulticlassConfusionMatrix(num_classes),
        "acc_balanced": MulticlassAccuracy(num_classes, average="macro"),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: TensorSplit,
    spec: DataSpec,
    batch_size: int = 1000,
    precision: str = "fp32",
    device: torch.device = torch.device("cpu"),
    channels_last: bool = False,
    detailed: bool = False,
    env: DistEnv | None = None,
) -> dict[str, Any]:
    """Mean loss and accuracy over `split`; with `detailed`, the full classification report.

    Under torchrun each rank evaluates its share of the rows and the sums are reduced (not `detailed`).
    """
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    extra = _detailed_metrics(spec.num_classes) if detailed and spec.task == "classification" else {}
    if env is not None and env.distributed and detailed:
        raise ValueError("detailed metrics are computed on one process: call evaluate without env")
    batches: list[slice | None] = list(eval_batches(len(split), batch_size))
    if env is not None and env.distributed:
        # every rank must run as many forwards as the busiest one: FSDP and pipeline stages take part in
        # each other's forwards, so a rank that stopped early would leave the others waiting forever
        largest = len(split) - (env.world_size - 1) * (len(split) // env.world_size)  # the last rank's share
        padding_input = split.x[:1]
        mine = shard_rows(len(split), env)
        split = TensorSplit(split.x[mine], split.y[mine])
        batches = list(eval_batches(len(split), batch_size))
        batches += [None] * (math.ceil(largest / batch_size) - len(batches))
    for rows in batches:
        if rows is None:  # a padding forward, not counted
            with autocast(precision, device):
                model(padding_input.to(device))
            continue
        x, y = split.x[rows].to(device), split.y[rows].to(device)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            logits = model(x)
        total_loss += task_loss(logits, y).item() * y.numel()
        predictions = logits.argmax(-1)
        correct += (predictions == y).sum().item()
        count += y.numel()
        for metric in extra.values():
            metric.update(predictions.cpu(), y.cpu())
    model.train(was_training)
    total_loss, correct, count = all_reduce_sum(
        torch.tensor([total_loss, correct, count], dtype=torch.float64, device=device), env
    ).tolist()
    result: dict[str, Any] = {"loss": total_loss / max(count, 1), "acc": correct / max(count, 1)}
    if spec.task == "language_model":
        result["perplexity"] = float(torch.exp(torch.tensor(result["loss"])))
    for name, metric in extra.items():
        value = metric.compute()
        result[name] = value.tolist() if value.ndim else float(value)
    return result


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
