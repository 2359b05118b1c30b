"""Tokenizers for language models: UTF-8 bytes, or byte-level BPE trained locally with Hugging Face
`tokenizers`.

Both map any text to ids and back exactly (BPE works on bytes too, so nothing is ever out of vocabulary).
A BPE tokenizer is trained on the training split only and saved with the run as tokenizer.json (the format
`tokenizers.Tokenizer.from_file` reads), so `generate` and `explain` decode with the very tokenizer the
model was trained on. Training is deterministic: the same text and vocabulary size give the same merges.
"""

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from behemoth.errors import DataError, RunDirError
from behemoth.files import atomic_write_text
from behemoth.runs import RunDir
from behemoth.spec import DEFAULT_TOKENIZER_FILE, TokenizerRef

TOKENIZER_FILE = DEFAULT_TOKENIZER_FILE
DEFAULT_BPE_VOCAB = 2048


class TextTokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...  # (n,) integer ids
    def decode(self, ids: torch.Tensor | np.ndarray | list[int]) -> str: ...


def _as_list(ids: torch.Tensor | np.ndarray | list[int]) -> list[int]:
    return ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else list(ids)


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to train, any text round-trips exactly."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: torch.Tensor | np.ndarray | list[int]) -> str:
        return bytes(_as_list(ids)).decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme) held in a `tokenizers.Tokenizer`."""

    name = "bpe"

    def __init__(self, tokenizer: Any) -> None:  # a tokenizers.Tokenizer
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def decode(self, ids: torch.Tensor | np.ndarray | list[int]) -> str:
        return self.tokenizer.decode(_as_list(ids))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.to_json())


def train_bpe(text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> BPETokenizer:
    """Learn byte-level BPE merges from `text` until the vocabulary holds `vocab_size` tokens.

    The 256 byte symbols are the initial alphabet, so every text encodes, whatever it holds.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer)
    return BPETokenizer(tokenizer)


def load_bpe(path: Path) -> BPETokenizer:
    from tokenizers import Tokenizer

    try:
        return BPETokenizer(Tokenizer.from_file(str(path)))
    except Exception as exc:  # tokenizers raises a plain Exception for a missing or malformed file
        raise DataError(f"{path}: not a readable tokenizer.json ({exc})") from None


def make_tokenizer(
    kind: str, train_text: str, vocab_size: int | None, saved: str | None = None
) -> TextTokenizer:
    """The tokenizer data.tokenizer names: bytes, or BPE learned from the training text (or read from the
    `saved` tokenizer.json: a resumed run must not depend on retraining giving the same merges)."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe" and saved is not None:
        tokenizer = load_bpe(Path(saved))
        if vocab_size is not None and tokenizer.vocab_size != vocab_size:
            raise DataError(
                f"data.tokenizer_file = {saved!r} holds {tokenizer.vocab_size} tokens, "
                f"data.vocab_size = {vocab_size}"
            )
        return tokenizer
    if kind == "bpe":
        return train_bpe(train_text, vocab_size or DEFAULT_BPE_VOCAB)
    raise DataError(f"data.tokenizer = {kind!r}: unknown tokenizer (byte or bpe)")


def save_run_tokenizer(path: Path, tokenizer: TextTokenizer | None) -> None:
    """Write a trained tokenizer to `path` (the run's tokenizer.json); bytes need no file."""
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(path)


def load_tokenizer(ref: TokenizerRef, directory: Path) -> TextTokenizer:
    """The tokenizer `ref` names: bytes, or the BPE file it names inside `directory` (a run directory)."""
    if ref.kind == "byte":
        return ByteTokenizer()
    path = directory / (ref.file or TOKENIZER_FILE)
    if not path.is_file():
        raise RunDirError(f"{path} is missing: the run's BPE tokenizer was not saved")
    return load_bpe(path)


def load_run_tokenizer(run_dir: Path) -> TextTokenizer:
    """The tokenizer a language-model run was trained with, as its spec.json names it."""
    run = RunDir(Path(run_dir))
    ref = run.spec().tokenizer
    if ref is None:
        raise RunDirError(f"{run_dir} is not a language-model run (spec.json names no tokenizer)")
    return load_tokenizer(ref, run.path)
