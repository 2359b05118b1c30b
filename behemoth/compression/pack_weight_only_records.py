"""The .bhm record kinds of weight-only language-model weights (weight_only.py's kernels): int8 with one
bf16 scale per row, and int4 codes (bit-packed two to a byte) with bf16 scales and zeros per group. They are
always stored dense (the kernels read them dense) and their decoders check every shape and symbol, since a
forged file must fail in one line rather than reach a kernel."""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from behemoth.compression.pack_record_kind import Payload, Reader, RecordKind, scatter, symbol_stream


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
