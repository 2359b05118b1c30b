"""In-memory dataset splits as plain tensors: what every loader returns and the trainer consumes."""

from dataclasses import dataclass, field
from typing import Any

import torch

from behemoth.spec import DataSpec, Preprocessing


@dataclass
class TensorSplit:
    """Inputs and targets of one split, indexed together (batching is `x[idx], y[idx]`)."""

    x: torch.Tensor  # (N, *input_shape); float32 normalised images/features, or int64 token ids
    y: torch.Tensor  # (N,) int64 labels, or (N, T) int64 next-token targets

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"inputs and targets differ in length: {len(self.x)} vs {len(self.y)}")

    def __len__(self) -> int:
        return len(self.x)

    def take(self, count: int) -> "TensorSplit":
        return TensorSplit(self.x[:count], self.y[:count])


@dataclass
class DataBundle:
    """A loaded dataset: train (always), val and test (when the source has them)."""

    name: str
    spec: DataSpec
    train: TensorSplit
    val: TensorSplit | None = None
    test: TensorSplit | None = None
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # plain description: source, splits, mean/std, ...
    tokenizer: Any = None  # the text tokenizer a language model's ids come from (behemoth.data.tokenizers)

    @property
    def preprocessing(self) -> Preprocessing | None:
        """How raw inputs were turned into these tensors (classification data), read from `meta`."""
        return Preprocessing.from_meta(self.meta)

    def splits(self) -> dict[str, TensorSplit]:
        return {
            k: v for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v is not None
        }
