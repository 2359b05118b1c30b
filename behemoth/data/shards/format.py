"""The on-disk format of a shard directory, shared by the writer and the reader.

    OUT/
      index.json          what is where: splits, per-shard sample counts, byte sizes, sha256, how to decode
      train-00000.b2f     one shard: x's bytes as one blosc2 chunk, then y's
                          (lengths, shapes, dtypes in the index)
      train-labels.b2f    the class labels alone (classification), for statistics without reading x
      val-00000.b2f ...

Every shard's sha256 (of its compressed bytes) and size are checked before it is decompressed: blosc2
itself can return wrong numbers from a chunk with a flipped byte rather than fail.

Samples are stored in the smallest exact dtype: integer arrays in the narrowest integer type holding
their range, and normalised float images as their original 8-bit pixels when decoding them again
reproduces every float bit for bit (checked at pack time; otherwise float32 is kept).
"""

import hashlib
import json
import math
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from behemoth.errors import DataError
from behemoth.spec import Preprocessing

FORMAT = "behemoth-shards"
VERSION = 1
INDEX = "index.json"
SUFFIX = ".b2f"


@dataclass
class ShardInfo:
    file: str  # relative to the directory
    count: int  # samples
    bytes: int  # compressed file size
    raw_bytes: int  # stored arrays' bytes before compression
    x_bytes: int  # the x chunk's length; the y chunk follows it
    sha256: str


@dataclass
class Decode:
    """How stored x becomes the loader's float tensor: (x / scale - mean) / std per channel (or feature)."""

    scale: float
    mean: list[float]
    std: list[float]

    def __post_init__(self) -> None:
        self._table: np.ndarray | None = None  # an attribute, not a field: the index JSON never holds it

    def __call__(self, stored: torch.Tensor) -> torch.Tensor:
        if stored.dtype == torch.uint8 and stored.ndim == 4:
            return self.look_up(stored)
        return self.compute(stored)

    def look_up(self, stored: torch.Tensor) -> torch.Tensor:
        """8-bit images through a (channels, 256) table of `compute`'s own results: the same bits, ~3x faster
        than the four float passes (what a streamed epoch spends most of its time on)."""
        if self._table is None:
            levels = (
                torch.arange(256, dtype=torch.uint8).view(256, 1).expand(256, len(self.mean)).contiguous()
            )
            self._table = np.ascontiguousarray(self.compute(levels).numpy().T)  # (C, 256)
        pixels = stored.numpy()
        out = np.empty(pixels.shape, np.float32)
        for channel, table in enumerate(
            self._table
        ):  # np.take indexes with uint8 directly (torch needs int64)
            np.take(table, pixels[:, channel], out=out[:, channel], mode="clip")
        return torch.from_numpy(out)

    def compute(self, stored: torch.Tensor) -> torch.Tensor:
        # the same float32 operations, in the same order, as behemoth.data.assemble (to_float + normaliser),
        # so the result is bit for bit what the original loader produced
        x = stored.to(torch.float32)
        if self.scale != 1.0:
            x = x.div_(self.scale)
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return x.sub_(mean).div_(std)


@dataclass
class SplitInfo:
    count: int
    x_shape: list[int]  # per sample
    x_dtype: str  # stored
    y_shape: list[int]
    y_dtype: str  # stored
    x_range: list[list[float]] | None  # per-channel [low, high] of the decoded images (augmentation fill)
    decode: Decode | None  # None: x is stored as the loader's values (cast to float32 or int64)
    shards: list[ShardInfo] = field(default_factory=list)
    labels: ShardInfo | None = None  # class labels (N,) alone, in row order: cheap to read for statistics

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def raw_bytes(self) -> int:
        return sum(s.raw_bytes for s in self.shards)

    @property
    def memory_bytes(self) -> int:
        """The decoded tensors' size: float32 inputs (int64 tokens), int64 labels (float32 soft targets)."""
        x_item = 4 if self.decode is not None or self.x_dtype.startswith("float") else 8
        y_item = 4 if self.y_dtype.startswith("float") else 8
        return self.count * (x_item * math.prod(self.x_shape) + y_item * math.prod(self.y_shape))


@dataclass
class ShardIndex:
    dataset: str
    spec: dict[str, Any]  # behemoth.spec.DataSpec as a dict
    class_names: list[str]
    meta: dict[str, Any]
    codec: str
    level: int
    filter: str
    splits: dict[str, SplitInfo]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=1) + "\n"


def read_index(root: Path) -> ShardIndex:
    """The index of shard directory `root`, or a DataError naming what is wrong with it.

    Every file name it lists is checked here (`inside`), so a crafted index fails before any shard is read.
    """
    path = root / INDEX
    if not path.is_file():
        raise DataError(
            f"{root} is not a shard directory: {INDEX} not found (write one with `behemoth data pack`)"
        )
    inside(root, INDEX, "the index file")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise DataError(f"{path}: not a {FORMAT} v{VERSION} index")
        splits = {}
        for name, split in raw["splits"].items():
            decode_raw = split.pop("decode", None)
            decode = Decode(**decode_raw) if decode_raw else None
            shards = [ShardInfo(**s) for s in split.pop("shards")]
            labels_raw = split.pop("labels", None)
            labels = ShardInfo(**labels_raw) if labels_raw else None
            splits[name] = SplitInfo(**split, decode=decode, shards=shards, labels=labels)
        fields = {k: raw[k] for k in ("dataset", "spec", "class_names", "meta", "codec", "level", "filter")}
        index = ShardIndex(**fields, splits=splits)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: damaged index ({type(exc).__name__}: {exc})") from None
    check_files(root, index)
    return index


def check_files(root: Path, index: ShardIndex) -> None:
    """Every shard and labels file the index names lies inside `root` (a DataError naming the first that
    does not)."""
    for name, split in index.splits.items():
        for number, shard in enumerate(split.shards):
            inside(root, shard.file, f"split {name!r} shard {number} file")
        if split.labels is not None:
            inside(root, split.labels.file, f"split {name!r} labels file")


def inside(root: Path, name: object, entry: str) -> Path:
    """`root / name`, if `name` is a plain file name whose target (links followed) is a regular file inside
    `root` or does not exist yet. A shard directory is shared data: its index must not make the reader
    open, or hash and report on, a file elsewhere (`../x`, `/etc/passwd`, a link out)."""
    problem = name_problem(name) or target_problem(Path(root), str(name))
    if problem:
        raise DataError(
            f"{Path(root) / INDEX}: {entry} {name!r} {problem}; "
            f"shard files must be plain file names inside {root}"
        )
    return Path(root) / str(name)


def name_problem(name: object) -> str | None:
    """Why `name` is not a plain file name, or None."""
    if not isinstance(name, str) or name in ("", ".", "..") or "\0" in name:
        return "is not a file name"
    if "/" in name or "\\" in name:
        return "is a path, not a file name"
    return None


def target_problem(root: Path, name: str) -> str | None:
    """Why `root / name` (links followed) is outside `root` or not a regular file, or None."""
    try:
        target = (root / name).resolve()
        if not target.is_relative_to(root.resolve()):
            return f"leads to {target}, outside the directory"
        if target.exists() and not stat.S_ISREG(target.stat().st_mode):
            return "is not a regular file"
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        return f"cannot be resolved ({exc})"
    return None


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def compact_integers(array: np.ndarray) -> np.ndarray:
    """The same integers in the narrowest dtype that holds them all (lossless by construction)."""
    if array.size == 0:
        return array.astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype)
    return array.astype(np.int64)


def pixels_if_exact(
    x: torch.Tensor, prep: Preprocessing | None, chunk: int = 8192
) -> tuple[np.ndarray, Decode] | None:
    """x (N, ...) float as 8-bit values + the Decode that gives x back bit for bit, or None when it does not.

    Works for images a loader scaled from 8-bit pixels and normalised (`prep`: scale, mean, std).
    Checked chunk by chunk, so memory stays near the chunk size.
    """
    if prep is None or not x.is_floating_point() or len(x) == 0:
        return None
    decode = Decode(prep.scale, list(prep.mean), list(prep.std))
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    if x.ndim not in (2, 4) or len(decode.mean) != x.shape[1]:
        return None
    mean = torch.tensor(decode.mean, dtype=torch.float64).view(shape)
    std = torch.tensor(decode.std, dtype=torch.float64).view(shape)
    out = np.empty(x.shape, dtype=np.uint8)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].double()
        values = torch.round((part * std + mean) * decode.scale)
        if values.min() < 0 or values.max() > 255:
            return None
        pixels = values.to(torch.uint8)
        if not torch.equal(decode(pixels), x[start : start + chunk]):
            return None
        out[start : start + chunk] = pixels.numpy()
    return out, decode
