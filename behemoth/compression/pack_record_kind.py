"""What every kind of .bhm weight record shares (pack_records.py holds the kinds): the streams of one
header entry (Payload), how values become a stream (float bytes, or integer symbols for bit packing and
entropy coding) and back, and RecordKind, the interface each kind implements."""

import zlib
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from behemoth.compression import coding

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
    ) -> Any:
        """The record from its decoded values (positions: None for the dense layout) and side streams."""
        raise NotImplementedError
