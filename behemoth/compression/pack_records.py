"""The kinds of weight record a .bhm stores, each as one RecordKind found in KINDS by the `kind` name that
its header entry carries: a dense tensor, an int8 weight (torch.ao's scales and zero points), a k-means
codebook weight (Deep Compression §3), and weight-only int8 / int4 weights for language models
(weight_only.py's kernels: bf16 scales, int4 codes bit-packed two to a byte).

A kind says what its header entry holds beyond the shared fields, which side streams it writes (centroids,
scales), how its values become a stream (float bytes, or integer symbols for bit packing and entropy
coding), and how a record is rebuilt from the decoded values. Choosing dense or sparse layout, relative
indices and the file's framing stay in pack_format.py, the same for every kind.

Adding a kind: a RecordKind subclass here, its instance in KINDS, its type in Record, and a row in the
table of tests/test_compress_pack.py.
"""

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from behemoth.compression import coding
from behemoth.compression.kmeans import Codebook

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "bool": torch.bool,
}


@dataclass
class Int8Weight:
    """An int8 weight: w ~ scale * (q - zero_point), one scale per output channel (axis 0) or per tensor."""

    q: torch.Tensor  # weight-shaped int8
    scales: torch.Tensor  # (C,) or (1,) float
    zero_points: torch.Tensor  # same shape, int
    axis: int | None  # 0 per channel, None per tensor


@dataclass
class Int8WeightOnly:
    """A weight-only int8 weight: w ~ q * scale, q (N, K) int8 in [-127, 127], one bf16 scale per row."""

    q: torch.Tensor  # (N, K) int8
    scales: torch.Tensor  # (N,) bfloat16


@dataclass
class Int4WeightOnly:
    """A weight-only int4 weight: w ~ (q - 8) * scale + zero per group of `group` inputs of a row."""

    codes: torch.Tensor  # (N, K) uint8 in [0, 15]
    scales_and_zeros: torch.Tensor  # (K / group, N, 2) bfloat16, the kernel's layout
    group: int


# a dense tensor, shared weights, torch.ao int8 weights, or weight-only int8 / int4 weights
Record = torch.Tensor | Codebook | Int8Weight | Int8WeightOnly | Int4WeightOnly
Reader = Callable[[str], bytes]  # the checksummed bytes of one stream of the entry being decoded, by key


class Payload:
    """The streams of one header entry, in order: each `add` returns the stream's header description."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes, coding_name: str, **extra: Any) -> dict[str, Any]:
        entry = {
            "offset": self.size,
            "length": len(data),
            "crc32": zlib.crc32(data),
            "coding": coding_name,
            **extra,
        }
        self.parts.append(data)
        self.size += len(data)
        return entry


def float_stream(values: np.ndarray, code: str, payload: Payload) -> dict[str, Any]:
    """Raw float bytes (zstd-compressed when code = zstd), tagged with their dtype for the reader."""
    raw = np.ascontiguousarray(values).tobytes()
    if code == "zstd" and raw:
        return payload.add(coding.zstd_encode(raw, values.dtype.itemsize), "zstd", dtype=str(values.dtype))
    return payload.add(raw, "raw", dtype=str(values.dtype))


def symbol_stream(
    symbols: np.ndarray, alphabet: int, code: str, payload: Payload, **extra: Any
) -> dict[str, Any]:
    """Integer symbols in [0, alphabet), bit-packed or entropy-coded by `code`."""
    return payload.add(coding.encode_symbols(symbols, alphabet, code), code, alphabet=alphabet, **extra)


def stream_values(stream: dict[str, Any], data: bytes, count: int) -> np.ndarray:
    """The first `count` values of a values stream: symbols when it has an alphabet, else floats."""
    if "alphabet" in stream:
        return coding.decode_symbols(data, stream["alphabet"], count, stream["coding"])
    raw = coding.zstd_decode(data) if stream["coding"] == "zstd" else data
    return np.frombuffer(raw, dtype=stream["dtype"])[:count]


def scatter(
    values: np.ndarray,
    positions: np.ndarray | None,
    shape: list[int],
    fill: float | int,
    dtype: np.dtype | type,
) -> np.ndarray:
    """The weight-shaped array: dense values as they are, or sparse values at `positions` among `fill`s."""
    if positions is None:
        return np.asarray(values, dtype=dtype).reshape(shape)
    out = np.full(int(np.prod(shape, dtype=np.int64)), fill, dtype=dtype)
    out[positions] = values
    return out.reshape(shape)


class RecordKind:
    """One kind of record: its header entry fields and streams on the way in, the record on the way out."""

    name: ClassVar[str]  # the header's `kind`
    record_type: ClassVar[type]  # the in-memory record class it stores

    def fields(self, record: Any) -> dict[str, Any]:
        """The entry's `kind`, `shape` and the kind's own fields, in header order."""
        raise NotImplementedError

    def side_streams(self, record: Any, payload: Payload) -> dict[str, dict[str, Any]]:
        """Streams written before the values (codebook centroids, int8 scales); none by default."""
        return {}

    def numel(self, record: Any) -> int:
        raise NotImplementedError

    def nonzero_positions(self, record: Any) -> np.ndarray:
        """Flat positions a sparse layout stores."""
        raise NotImplementedError

    def may_be_sparse(self, record: Any) -> bool:
        return True

    def value_bits(self, record: Any) -> float:
        """Bits per stored value, to size the sparse layout's relative indices."""
        raise NotImplementedError

    def values_stream(
        self, record: Any, positions: np.ndarray | None, code: str, payload: Payload
    ) -> dict[str, Any]:
        """The values (all, or those at `positions`) as one stream."""
        raise NotImplementedError

    def decode(
        self, entry: dict[str, Any], values: np.ndarray, positions: np.ndarray | None, read: Reader
    ) -> Record:
        """The record from its decoded values (positions: None for the dense layout) and side streams."""
        raise NotImplementedError


class DenseKind(RecordKind):
    """A plain tensor of any dtype; only floating weight matrices are considered for the sparse layout."""

    name, record_type = "dense", torch.Tensor

    def fields(self, record: torch.Tensor) -> dict[str, Any]:
        dtype = str(record.dtype).replace("torch.", "")
        return {"kind": self.name, "shape": list(record.shape), "dtype": dtype}

    def numel(self, record: torch.Tensor) -> int:
        return record.numel()

    def nonzero_positions(self, record: torch.Tensor) -> np.ndarray:
        return np.flatnonzero(record.detach().flatten().cpu().numpy() != 0)

    def may_be_sparse(self, record: torch.Tensor) -> bool:
        return record.ndim >= 2 and record.is_floating_point()  # biases, norms, counters: dense

    def value_bits(self, record: torch.Tensor) -> float:
        return 32.0

    def values_stream(
        self, record: torch.Tensor, positions: np.ndarray | None, code: str, payload: Payload
    ) -> dict[str, Any]:
        values = record.detach().cpu().flatten().numpy()
        return float_stream(values[positions] if positions is not None else values, code, payload)

    def decode(
        self, entry: dict[str, Any], values: np.ndarray, positions: np.ndarray | None, read: Reader
    ) -> torch.Tensor:
        array = scatter(values, positions, entry["shape"], 0, np.dtype(values.dtype))
        tensor = torch.from_numpy(array.copy())
        return tensor.to(DTYPES[entry["dtype"]]) if entry["dtype"] in DTYPES else tensor


class Int8Kind(RecordKind):
    """An int8 weight: q shifted to symbols in [0, 256), with float scales and int16 zero points."""

    name, record_type = "int8", Int8Weight

    def fields(self, record: Int8Weight) -> dict[str, Any]:
        return {"kind": self.name, "shape": list(record.q.shape), "axis": record.axis}

    def side_streams(self, record: Int8Weight, payload: Payload) -> dict[str, dict[str, Any]]:
        scales = record.scales.double()
        exact32 = torch.equal(scales.float().double(), scales)  # observers compute scales in float32
        scales = scales.float() if exact32 else scales
        return {
            "scales": payload.add(
                scales.numpy().tobytes(), "raw", count=scales.numel(), dtype=str(scales.numpy().dtype)
            ),
            "zero_points": payload.add(record.zero_points.to(torch.int16).numpy().tobytes(), "raw"),
        }

    def numel(self, record: Int8Weight) -> int:
        return record.q.numel()

    def nonzero_positions(self, record: Int8Weight) -> np.ndarray:
        return np.flatnonzero(record.q.flatten().numpy() != 0)

    def value_bits(self, record: Int8Weight) -> float:
        return 8.0

    def values_stream(
        self, record: Int8Weight, positions: np.ndarray | None, code: str, payload: Payload
    ) -> dict[str, Any]:
        q = record.q.flatten().numpy().astype(np.int64) + 128  # int8 -> [0, 256)
        return symbol_stream(q[positions] if positions is not None else q, 256, code, payload)

    def decode(
        self, entry: dict[str, Any], values: np.ndarray, positions: np.ndarray | None, read: Reader
    ) -> Int8Weight:
        q = (scatter(values, positions, entry["shape"], 128, np.int64) - 128).astype(np.int8)
        scales = np.frombuffer(read("scales"), dtype=entry["streams"]["scales"]["dtype"])
        zero_points = np.frombuffer(read("zero_points"), dtype=np.int16).astype(np.int64)
        return Int8Weight(
            torch.from_numpy(q),
            torch.from_numpy(scales.astype(np.float64)),
            torch.from_numpy(zero_points),
            entry["axis"],
        )


class CodebookKind(RecordKind):
    """Shared weights: float32 centroids, and per weight an index into them bit-packed to log2(K) bits.

    Pruned weights (index -1) are left out by the sparse layout; a dense layout with pruned weights shifts
    the symbols by one (0 is "zero", k + 1 is centroid k), which the reader tells by the alphabet K + 1."""

    name, record_type = "codebook", Codebook

    def fields(self, record: Codebook) -> dict[str, Any]:
        return {"kind": self.name, "shape": list(record.index.shape), "bits": record.bits}

    def side_streams(self, record: Codebook, payload: Payload) -> dict[str, dict[str, Any]]:
        centroids = record.centroids.float().numpy().tobytes()
        return {"centroids": payload.add(centroids, "raw", count=record.centroids.numel())}

    def numel(self, record: Codebook) -> int:
        return record.index.numel()

    def nonzero_positions(self, record: Codebook) -> np.ndarray:
        return np.flatnonzero(record.index.flatten().numpy() >= 0)

    def value_bits(self, record: Codebook) -> float:
        return coding.bits_for(record.centroids.numel())

    def values_stream(
        self, record: Codebook, positions: np.ndarray | None, code: str, payload: Payload
    ) -> dict[str, Any]:
        index, k = record.index.flatten().numpy(), record.centroids.numel()
        if positions is not None:
            return symbol_stream(index[positions], k, code, payload)
        if (index < 0).any():
            return symbol_stream(index + 1, k + 1, code, payload)
        return symbol_stream(index, k, code, payload)

    def decode(
        self, entry: dict[str, Any], values: np.ndarray, positions: np.ndarray | None, read: Reader
    ) -> Codebook:
        centroids = np.frombuffer(read("centroids"), dtype=np.float32)
        index = scatter(values, positions, entry["shape"], -1, np.int64)
        if positions is None and len(centroids) + 1 == entry["streams"]["values"]["alphabet"]:
            index = index - 1  # dense with pruned entries: symbol 0 was "zero"
        return Codebook(torch.from_numpy(centroids.copy()), torch.from_numpy(index), entry["bits"])


def bf16_stream(values: torch.Tensor, payload: Payload) -> dict[str, Any]:
    """bfloat16 values as their raw 2-byte patterns (numpy has no bfloat16)."""
    raw = values.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
    return payload.add(raw, "raw", count=values.numel(), dtype="bfloat16")


def read_bf16(read: Reader, key: str, shape: list[int]) -> torch.Tensor:
    """A bfloat16 side stream of exactly prod(shape) values (a wrong length is a corrupt or forged file)."""
    raw = np.frombuffer(read(key), dtype=np.int16)
    expected = int(np.prod(shape, dtype=np.int64))
    if raw.size != expected:
        raise ValueError(f"stream {key} holds {raw.size} values, the weight's shape needs {expected}")
    return torch.from_numpy(raw.copy()).view(torch.bfloat16).reshape(shape)


def check_symbols(values: np.ndarray, alphabet: int) -> None:
    if values.size and (int(values.min()) < 0 or int(values.max()) >= alphabet):
        raise ValueError(f"a symbol is outside [0, {alphabet})")


def check_matrix(entry: dict[str, Any]) -> tuple[int, int]:
    shape = entry["shape"]
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"a weight-only weight is a matrix, not of shape {shape}")
    return int(shape[0]), int(shape[1])


class Int8WeightOnlyKind(RecordKind):
    """Weight-only int8: q shifted to symbols in [0, 256) (one byte each with code none), bf16 scales."""

    name, record_type = "int8w", Int8WeightOnly

    def fields(self, record: Int8WeightOnly) -> dict[str, Any]:
        return {"kind": self.name, "shape": list(record.q.shape)}

    def side_streams(self, record: Int8WeightOnly, payload: Payload) -> dict[str, dict[str, Any]]:
        return {"scales": bf16_stream(record.scales, payload)}

    def numel(self, record: Int8WeightOnly) -> int:
        return record.q.numel()

    def may_be_sparse(self, record: Int8WeightOnly) -> bool:
        return False  # decoded dense onto the kernel anyway

    def value_bits(self, record: Int8WeightOnly) -> float:
        return 8.0

    def values_stream(
        self, record: Int8WeightOnly, positions: np.ndarray | None, code: str, payload: Payload
    ) -> dict[str, Any]:
        q = record.q.flatten().numpy().astype(np.int64) + 128  # int8 -> [0, 256)
        return symbol_stream(q, 256, code, payload)

    def decode(
        self, entry: dict[str, Any], values: np.ndarray, positions: np.ndarray | None, read: Reader
    ) -> Int8WeightOnly:
        rows, _ = check_matrix(entry)
        check_symbols(values, 256)
        q = (scatter(values, None, entry["shape"], 128, np.int64) - 128).astype(np.int8)
        return Int8WeightOnly(torch.from_numpy(q), read_bf16(read, "scales", [rows]))


class Int4WeightOnlyKind(RecordKind):
    """Weight-only int4: codes as 4-bit symbols (two per byte with code none), bf16 scales and zeros."""

    name, record_type = "int4w", Int4WeightOnly

    def fields(self, record: Int4WeightOnly) -> dict[str, Any]:
        return {"kind": self.name, "shape": list(record.codes.shape), "group": record.group}

    def side_streams(self, record: Int4WeightOnly, payload: Payload) -> dict[str, dict[str, Any]]:
        return {"scales_and_zeros": bf16_stream(record.scales_and_zeros, payload)}

    def numel(self, record: Int4WeightOnly) -> int:
        return record.codes.numel()

    def may_be_sparse(self, record: Int4WeightOnly) -> bool:
        return False

    def value_bits(self, record: Int4WeightOnly) -> float:
        return 4.0

    def values_stream(
        self, record: Int4WeightOnly, positions: np.ndarray | None, code: str, payload: Payload
    ) -> dict[str, Any]:
        return symbol_stream(record.codes.flatten().numpy().astype(np.int64), 16, code, payload)

    def decode(
        self, entry: dict[str, Any], values: np.ndarray, positions: np.ndarray | None, read: Reader
    ) -> Int4WeightOnly:
        rows, cols = check_matrix(entry)
        group = entry["group"]
        if not isinstance(group, int) or group < 1 or cols % group:
            raise ValueError(f"int4 group {group!r} does not divide the {cols} inputs")
        check_symbols(values, 16)
        codes = scatter(values, None, entry["shape"], 0, np.uint8)
        sz = read_bf16(read, "scales_and_zeros", [cols // group, rows, 2])
        return Int4WeightOnly(torch.from_numpy(codes.copy()), sz, group)


KINDS: dict[str, RecordKind] = {
    kind.name: kind
    for kind in (DenseKind(), Int8Kind(), CodebookKind(), Int8WeightOnlyKind(), Int4WeightOnlyKind())
}


def kind_of(record: Record) -> RecordKind:
    """The kind that stores `record`, by its class."""
    for kind in KINDS.values():
        if isinstance(record, kind.record_type):
            return kind
    raise TypeError(f"a .bhm cannot store a {type(record).__name__}: known kinds are {', '.join(KINDS)}")
