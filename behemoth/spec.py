"""Plain description of a dataset's shape, shared by data (which produces it) and models (which read it)."""

from dataclasses import dataclass
from typing import Literal

Task = Literal["classification", "language_model"]


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data, and nothing else.

    input_shape is per sample: (C, H, W) for images, (F,) for tables, (T,) token ids for text.
    num_classes is the number of labels, or the vocabulary size for a language model.
    """

    task: Task
    input_shape: tuple[int, ...]
    num_classes: int
