"""Tokenizers for language models: UTF-8 bytes, byte-level BPE trained locally with Hugging Face
`tokenizers`, or a Hugging Face model's own tokenizer ("hf", read from its directory).

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
    def to_json(self) -> str: ...  # as a `tokenizers` tokenizer.json


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

    def to_json(self) -> str:
        """The same tokenizer as a `tokenizers` tokenizer.json (for a Hugging Face export): byte-level, with
        a vocabulary of the 256 bytes at ids equal to their values and no merges."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        vocab = {char: byte for byte, char in enumerate(byte_level_alphabet())}
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer.to_str()


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte, indexed by the byte's value (what the ByteLevel
    pre-tokenizer turns byte b into). `tokenizers` exposes the set (ByteLevel.alphabet()) but not the
    order, and a byte tokenizer's ids must be the byte values, hence this short table."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + shift)
            shift += 1
    return [chars[byte] for byte in range(256)]


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


class HFTokenizer(BPETokenizer):
    """A Hugging Face model's tokenizer (any `tokenizers` model: BPE, Unigram, WordPiece). Text is encoded
    without special tokens: the data are one stream of text, packed into sequences, not separate inputs.
    The vocabulary counts added tokens too (the ids the model's embedding must cover)."""

    name = "hf"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)


def load_hf_tokenizer(directory: str | Path) -> HFTokenizer:
    """The tokenizer of the Hugging Face directory `directory`: its tokenizer.json (read by `tokenizers`,
    which runs no code), else what transformers' AutoTokenizer makes of its files (local only, no remote
    code), as long as that is a fast tokenizer (one `tokenizers` can save as tokenizer.json for the run)."""
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.tokenizer_path = {str(directory)!r}: not a directory")
    if (folder / TOKENIZER_FILE).is_file():
        return HFTokenizer(load_bpe(folder / TOKENIZER_FILE).tokenizer)
    try:
        from transformers import AutoTokenizer

        loaded = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a missing tokenizer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{folder}: no tokenizer: no {TOKENIZER_FILE}, and transformers' AutoTokenizer finds none "
            f"({first})"
        ) from None
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise DataError(f"{folder}: its tokenizer ({type(loaded).__name__}) has no {TOKENIZER_FILE} form")
    return HFTokenizer(backend)


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
    kind: str,
    train_text: str,
    vocab_size: int | None,
    saved: str | None = None,
    path: str | None = None,
) -> TextTokenizer:
    """The tokenizer data.tokenizer names: bytes, BPE learned from the training text (or read from the
    `saved` tokenizer.json: a resumed run must not depend on retraining giving the same merges), or the
    Hugging Face tokenizer in `path` (data.tokenizer_path)."""
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
    if kind == "hf":
        if path is None:
            raise DataError("data.tokenizer = 'hf' needs data.tokenizer_path (a Hugging Face directory)")
        return load_hf_tokenizer(path)
    raise DataError(f"data.tokenizer = {kind!r}: unknown tokenizer (byte, bpe or hf)")


def save_run_tokenizer(path: Path, tokenizer: TextTokenizer | None) -> None:
    """Write a trained or model's tokenizer to `path` (the run's tokenizer.json); bytes need no file."""
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(path)


def load_tokenizer(ref: TokenizerRef, directory: Path) -> TextTokenizer:
    """The tokenizer `ref` names: bytes, or the tokenizer file it names inside `directory` (a run
    directory)."""
    if ref.kind == "byte":
        return ByteTokenizer()
    path = directory / (ref.file or TOKENIZER_FILE)
    if not path.is_file():
        raise RunDirError(f"{path} is missing: the run's {ref.kind} tokenizer was not saved")
    loaded = load_bpe(path)
    return HFTokenizer(loaded.tokenizer) if ref.kind == "hf" else loaded


def load_run_tokenizer(run_dir: Path) -> TextTokenizer:
    """The tokenizer a language-model run was trained with, as its spec.json names it."""
    run = RunDir(Path(run_dir))
    ref = run.spec().tokenizer
    if ref is None:
        raise RunDirError(f"{run_dir} is not a language-model run (spec.json names no tokenizer)")
    return load_tokenizer(ref, run.path)
