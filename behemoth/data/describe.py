"""A plain summary of a loaded dataset (sizes, class balance), saved with every run for the report."""

from typing import Any

import torch

from behemoth.data.bundle import DataBundle


def describe(data: DataBundle) -> dict[str, Any]:
    """Split sizes and, for classification, per-class counts of every split (lists indexed by class)."""
    out: dict[str, Any] = {
        "name": data.name,
        "task": data.spec.task,
        "input_shape": list(data.spec.input_shape),
        "num_classes": data.spec.num_classes,
        "class_names": list(data.class_names),
        "splits": {name: len(split) for name, split in data.splits().items()},
    }
    if data.spec.task == "classification":
        out["class_counts"] = {
            name: torch.bincount(split.y.flatten(), minlength=data.spec.num_classes).tolist()
            for name, split in data.splits().items()
            if not split.y.is_floating_point()
        }
    else:  # language model: tokens per split
        out["tokens"] = {name: int(split.y.numel()) for name, split in data.splits().items()}
    return out
