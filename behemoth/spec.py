"""Plain descriptions of a dataset, shared by data (which produces them), models and every stage that
reads a run: its shape, how raw inputs are preprocessed, and which tokenizer encodes its text."""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Task = Literal["classification", "language_model"]
DEFAULT_TOKENIZER_FILE = "tokenizer.json"  # a run's trained tokenizer, unless its spec names another


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data, and nothing else.

    input_shape is per sample: (C, H, W) for images, (F,) for tables, (T,) token ids for text.
    num_classes is the number of labels, or the vocabulary size for a language model.
    """

    task: Task
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become what a classifier reads: x / scale, then (x - mean) / std per channel (images)
    or per feature (tables). Read from a data bundle's or run's description by one decoder, `from_meta`, so
    predict, explain and the shard writer cannot disagree about defaults."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0  # what raw units are divided by first (255 for 8-bit pixels)
    layout: Literal["image", "table"] = "image"

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Preprocessing | None":
        """The preprocessing a data description records; None when it records none (token ids)."""
        if "mean" not in meta:
            return None
        mean = tuple(float(v) for v in meta["mean"])
        std = tuple(float(v) for v in meta.get("std", [1.0] * len(mean)))
        layout = "table" if meta.get("layout") == "table" else "image"
        return cls(mean, std, float(meta.get("input_scale", 1.0)), layout)


@dataclass(frozen=True)
class TokenizerRef:
    """Which tokenizer a language-model run was trained with: bytes, or a tokenizer.json saved inside the run
    (BPE trained on the run's text, or "hf": a Hugging Face model's own tokenizer, copied from its directory).
    """

    kind: Literal["byte", "bpe", "hf"]
    file: str | None = None  # bpe, hf: a file name inside the run directory

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "TokenizerRef | None":
        kind = meta.get("tokenizer")
        if kind not in ("byte", "bpe", "hf"):
            return None
        name = str(meta.get("tokenizer_file", DEFAULT_TOKENIZER_FILE)) if kind != "byte" else None
        if name is not None and (not name or Path(name).name != name or name in (".", "..")):
            raise ValueError(f"tokenizer_file = {name!r}: must name a file inside the run directory")
        return cls(kind, name)
