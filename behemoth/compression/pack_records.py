"""The kinds of weight record a .bhm stores, each as one RecordKind found in KINDS by the `kind` name that
its header entry carries: a dense tensor, an int8 weight (torch.ao's scales and zero points) and a k-means
codebook weight (Deep Compression §3) here, and weight-only int8 / int4 weights for language models in
pack_weight_only_records.py. What every kind shares (streams, the RecordKind interface) is in
pack_record_kind.py.

A kind says what its header entry holds beyond the shared fields, which side streams it writes (centroids,
scales), how its values become a stream (float bytes, or integer symbols for bit packing and entropy
coding), and how a record is rebuilt from the decoded values. Choosing dense or sparse layout, relative
indices and the file's framing stay in pack_format.py, the same for every kind.

Adding a kind: a RecordKind subclass (here, or in a module of its own for a new family), its instance in
KINDS, its type in Record, and a row in the table of tests/test_compress_pack.py.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from behemoth.compression import coding
from behemoth.compression.kmeans import Codebook
from behemoth.compression.pack_record_kind import (
    Payload,
    Reader,
    RecordKind,
    float_stream,
    scatter,
    symbol_stream,
)
from behemoth.compression.pack_weight_only_records import (
    Int4WeightOnly,
    Int4WeightOnlyKind,
    Int8WeightOnly,
    Int8WeightOnlyKind,
)

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


# a dense tensor, shared weights, torch.ao int8 weights, or weight-only int8 / int4 weights
Record = torch.Tensor | Codebook | Int8Weight | Int8WeightOnly | Int4WeightOnly


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
