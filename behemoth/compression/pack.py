"""The `.bhm` artifact: a compressed model in one checksummed file that `load_packed` turns back into a
runnable nn.Module (float, or int8 on torch.ao's kernels).

Layout (little endian):
    b"BHM1" | u32 header bytes | u32 CRC-32 of the header | header (zlib JSON) | payload (streams)
The header holds the model's config (zoo name and options), the data spec, the layer shapes (a structurally
pruned model is rebuilt at its pruned size), the runtime (float / int8_static / int8_dynamic with its
activation scales) and, per tensor, where its streams lie in the payload with a CRC-32 of each.

Each weight is stored in whichever layout is smaller: dense, or sparse (nonzero values plus their positions
as relative indices, Deep Compression §2). Values are raw float32, int8 symbols, or codebook indices
(k-means weight sharing) bit-packed to log2(K) bits. With `code` = huffman or zstd the integer streams are
entropy-coded. Nothing is unpickled on load: JSON and raw arrays only.
"""

import json
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from behemoth.compression import coding
from behemoth.compression.kmeans import Codebook
from behemoth.errors import BehemothError
from behemoth.files import atomic_write_bytes
from behemoth.spec import DataSpec

MAGIC = b"BHM1"
PREFIX = struct.Struct("<4sII")  # magic, header length, header CRC-32
DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
          "bfloat16": torch.bfloat16, "float16": torch.float16, "uint8": torch.uint8, "int8": torch.int8,
          "bool": torch.bool}


class PackedFileError(BehemothError):
    """A .bhm file is corrupted, truncated or not a .bhm file."""


@dataclass
class Int8Weight:
    """An int8 weight: w ~ scale * (q - zero_point), one scale per output channel (axis 0) or per tensor."""

    q: torch.Tensor  # weight-shaped int8
    scales: torch.Tensor  # (C,) or (1,) float
    zero_points: torch.Tensor  # same shape, int
    axis: int | None  # 0 per channel, None per tensor


Record = torch.Tensor | Codebook | Int8Weight  # a dense tensor, shared weights, or int8 weights


@dataclass
class PackedModel:
    """Everything a .bhm holds, in memory."""

    model_name: str
    model_options: dict[str, Any]
    spec: DataSpec
    tensors: dict[str, Record]
    shapes: dict[str, list[int]]  # float state-dict shapes (to rebuild pruned layers at their size)
    runtime: str = "float"  # float | int8_static | int8_dynamic
    engine: str = "x86"
    per_channel: bool = True
    activations: dict[str, list[float]] = field(default_factory=dict)  # int8_static: layer -> [scale, zero_point]
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


# ----- writing -----

class _Payload:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes, coding_name: str, **extra: Any) -> dict[str, Any]:
        entry = {"offset": self.size, "length": len(data), "crc32": zlib.crc32(data), "coding": coding_name, **extra}
        self.parts.append(data)
        self.size += len(data)
        return entry


def _float_stream(array: np.ndarray, code: str) -> tuple[bytes, str]:
    raw = np.ascontiguousarray(array).tobytes()
    if code == "zstd" and raw:
        return coding.zstd_encode(raw, array.dtype.itemsize), "zstd"
    return raw, "raw"


def _symbol_streams(symbols: np.ndarray, alphabet: int, code: str) -> tuple[bytes, str]:
    return coding.encode_symbols(symbols, alphabet, code), code


def _value_symbols(record: Record, flat_positions: np.ndarray | None) -> tuple[np.ndarray, int] | None:
    """Integer symbols of a weight's values (all of them, or those at `flat_positions`), or None for floats."""
    if isinstance(record, Codebook):
        index = record.index.flatten().numpy()
        if flat_positions is not None:
            return index[flat_positions], record.centroids.numel()
        if (index < 0).any():  # dense with pruned entries: symbol 0 is "zero", k + 1 is centroid k
            return index + 1, record.centroids.numel() + 1
        return index, record.centroids.numel()
    if isinstance(record, Int8Weight):
        q = record.q.flatten().numpy().astype(np.int64) + 128  # int8 -> [0, 256)
        return (q[flat_positions] if flat_positions is not None else q), 256
    return None


def _nonzero_positions(record: Record) -> np.ndarray:
    if isinstance(record, Codebook):
        return np.flatnonzero(record.index.flatten().numpy() >= 0)
    if isinstance(record, Int8Weight):
        return np.flatnonzero(record.q.flatten().numpy() != 0)
    return np.flatnonzero(record.detach().flatten().cpu().numpy() != 0)


def _encode_values(record: Record, positions: np.ndarray | None, code: str, payload: _Payload) -> dict[str, Any]:
    symbols = _value_symbols(record, positions)
    if symbols is None:
        values = record.detach().cpu().flatten().numpy()
        data, how = _float_stream(values[positions] if positions is not None else values, code)
        return payload.add(data, how, dtype=str(values.dtype))
    data, how = _symbol_streams(symbols[0], symbols[1], code)
    return payload.add(data, how, alphabet=symbols[1])


def _encode_weight(name: str, record: Record, code: str) -> tuple[dict[str, Any], list[bytes]]:
    """The smaller of the dense and sparse encodings of one tensor: (header entry, stream bytes)."""
    candidates = []
    for layout in ("dense", "sparse"):
        if layout == "sparse" and not _sparse_worthwhile(record):
            continue
        payload = _Payload()
        entry: dict[str, Any] = {"name": name, "layout": layout, "streams": {}}
        if isinstance(record, Codebook):
            entry.update(kind="codebook", shape=list(record.index.shape), bits=record.bits)
            entry["streams"]["centroids"] = payload.add(record.centroids.float().numpy().tobytes(), "raw",
                                                        count=record.centroids.numel())
        elif isinstance(record, Int8Weight):
            entry.update(kind="int8", shape=list(record.q.shape), axis=record.axis)
            scales = record.scales.double()
            exact32 = torch.equal(scales.float().double(), scales)  # observers compute scales in float32
            scales = scales.float() if exact32 else scales
            entry["streams"]["scales"] = payload.add(scales.numpy().tobytes(), "raw", count=scales.numel(),
                                                     dtype=str(scales.numpy().dtype))
            entry["streams"]["zero_points"] = payload.add(record.zero_points.to(torch.int16).numpy().tobytes(), "raw")
        else:
            entry.update(kind="dense", shape=list(record.shape), dtype=str(record.dtype).replace("torch.", ""))
        if layout == "sparse":
            positions = _nonzero_positions(record)
            value_bits = _value_bits(record)
            bits = coding.best_index_bits(positions, value_bits)
            gaps = coding.relative_indices(positions, bits)
            entry.update(nonzeros=int(positions.size), index_bits=bits)
            data, how = _symbol_streams(gaps, 1 << bits, code)
            entry["streams"]["gaps"] = payload.add(data, how, alphabet=1 << bits, count=int(gaps.size))
            entry["streams"]["values"] = _encode_values(record, positions, code, payload)
        else:
            entry["streams"]["values"] = _encode_values(record, None, code, payload)
        candidates.append((payload.size, entry, payload.parts))
    _, entry, parts = min(candidates, key=lambda c: c[0])
    return entry, parts


def _sparse_worthwhile(record: Record) -> bool:
    if isinstance(record, torch.Tensor) and (record.ndim < 2 or not record.is_floating_point()):
        return False  # biases, norms, counters: dense
    total = record.index.numel() if isinstance(record, Codebook) else \
        record.q.numel() if isinstance(record, Int8Weight) else record.numel()
    return _nonzero_positions(record).size < 0.5 * total


def _value_bits(record: Record) -> float:
    if isinstance(record, Codebook):
        return coding.bits_for(record.centroids.numel())
    return 8.0 if isinstance(record, Int8Weight) else 32.0


def encode(packed: PackedModel, code: str = "huffman") -> bytes:
    """The .bhm bytes of `packed` (see the module docstring for the layout)."""
    if code not in ("none", "huffman", "zstd"):
        raise ValueError(f"code = {code!r}: expected none, huffman or zstd")
    entries, parts, offset = [], [], 0
    for name, record in packed.tensors.items():
        entry, streams = _encode_weight(name, record, code)
        for stream in entry["streams"].values():
            stream["offset"] += offset
        offset += sum(len(s) for s in streams)
        entries.append(entry)
        parts.extend(streams)
    header = {
        "format": 1, "model": {"name": packed.model_name, "options": packed.model_options},
        "spec": asdict(packed.spec), "shapes": packed.shapes, "runtime": packed.runtime, "engine": packed.engine,
        "per_channel": packed.per_channel, "activations": packed.activations, "class_names": packed.class_names,
        "meta": packed.meta, "code": code, "tensors": entries, "payload_bytes": offset,
    }
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    return PREFIX.pack(MAGIC, len(header_bytes), zlib.crc32(header_bytes)) + header_bytes + b"".join(parts)


def save_packed(path: str | Path, packed: PackedModel, code: str = "huffman") -> int:
    """Write `packed` atomically to `path`; returns the file's size on disk in bytes."""
    path = Path(path)
    atomic_write_bytes(path, encode(packed, code))
    return path.stat().st_size


# ----- reading -----

def read_header(path: Path, data: bytes) -> tuple[dict[str, Any], memoryview]:
    if len(data) < PREFIX.size or data[:4] != MAGIC:
        raise PackedFileError(f"{path}: not a behemoth packed model (.bhm): bad magic bytes")
    _, length, crc = PREFIX.unpack_from(data)
    header_bytes = data[PREFIX.size:PREFIX.size + length]
    if len(header_bytes) != length:
        raise PackedFileError(f"{path}: truncated: the header needs {length} bytes, the file has {len(data)}")
    if zlib.crc32(header_bytes) != crc:
        raise PackedFileError(f"{path}: checksum mismatch in the header: the file is corrupted")
    header = json.loads(zlib.decompress(header_bytes))
    payload = memoryview(data)[PREFIX.size + length:]
    if len(payload) != header["payload_bytes"]:
        raise PackedFileError(f"{path}: truncated or padded: payload has {len(payload)} bytes, "
                              f"header says {header['payload_bytes']}")
    return header, payload


def _stream(path: Path, payload: memoryview, entry: dict[str, Any], key: str) -> bytes:
    stream = entry["streams"][key]
    data = bytes(payload[stream["offset"]:stream["offset"] + stream["length"]])
    if len(data) != stream["length"] or zlib.crc32(data) != stream["crc32"]:
        raise PackedFileError(f"{path}: checksum mismatch in tensor {entry['name']} ({key}): the file is corrupted")
    return data


def _decode_values(path: Path, payload: memoryview, entry: dict[str, Any], count: int) -> np.ndarray:
    stream = entry["streams"]["values"]
    data = _stream(path, payload, entry, "values")
    if "alphabet" in stream:
        return coding.decode_symbols(data, stream["alphabet"], count, stream["coding"])
    raw = coding.zstd_decode(data) if stream["coding"] == "zstd" else data
    return np.frombuffer(raw, dtype=stream["dtype"])[:count]


def _decode_entry(path: Path, payload: memoryview, entry: dict[str, Any]) -> Record:
    shape, total = entry["shape"], int(np.prod(entry["shape"], dtype=np.int64))
    if entry["layout"] == "sparse":
        gaps_info = entry["streams"]["gaps"]
        gaps = coding.decode_symbols(_stream(path, payload, entry, "gaps"), gaps_info["alphabet"],
                                     gaps_info["count"], gaps_info["coding"])
        positions = coding.absolute_positions(gaps, entry["index_bits"])
        values = _decode_values(path, payload, entry, entry["nonzeros"])
    else:
        positions, values = None, _decode_values(path, payload, entry, total)

    def scatter(fill: float | int, dtype: np.dtype) -> np.ndarray:
        if positions is None:
            return np.asarray(values, dtype=dtype)
        out = np.full(total, fill, dtype=dtype)
        out[positions] = values
        return out

    if entry["kind"] == "codebook":
        centroids = np.frombuffer(_stream(path, payload, entry, "centroids"), dtype=np.float32)
        index = scatter(-1, np.int64)
        if positions is None and len(centroids) + 1 == entry["streams"]["values"]["alphabet"]:
            index = index - 1  # dense with pruned entries: symbol 0 was "zero"
        return Codebook(torch.from_numpy(centroids.copy()), torch.from_numpy(index.reshape(shape)), entry["bits"])
    if entry["kind"] == "int8":
        q = (scatter(128, np.int64) - 128).astype(np.int8).reshape(shape)
        scales = np.frombuffer(_stream(path, payload, entry, "scales"), dtype=entry["streams"]["scales"]["dtype"])
        zero_points = np.frombuffer(_stream(path, payload, entry, "zero_points"), dtype=np.int16).astype(np.int64)
        return Int8Weight(torch.from_numpy(q), torch.from_numpy(scales.astype(np.float64)),
                          torch.from_numpy(zero_points), entry["axis"])
    array = scatter(0, np.dtype(values.dtype)).reshape(shape)
    tensor = torch.from_numpy(array.copy())
    return tensor.to(DTYPES[entry["dtype"]]) if entry["dtype"] in DTYPES else tensor


def read_packed(path: str | Path) -> PackedModel:
    """Parse and verify a .bhm file (every stream's CRC-32); raises PackedFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PackedFileError(f"{path}: no such packed model")
    header, payload = read_header(path, path.read_bytes())
    try:
        tensors = {entry["name"]: _decode_entry(path, payload, entry) for entry in header["tensors"]}
    except PackedFileError:
        raise
    except (ValueError, KeyError, zlib.error) as exc:  # CRCs passed yet decoding failed: a writer bug or tampering
        raise PackedFileError(f"{path}: cannot decode: {exc}") from None
    spec = header["spec"]
    return PackedModel(
        header["model"]["name"], header["model"]["options"],
        DataSpec(spec["task"], tuple(spec["input_shape"]), spec["num_classes"]), tensors, header["shapes"],
        header["runtime"], header["engine"], header["per_channel"], header["activations"],
        header["class_names"], header["meta"],
    )


def packed_info(path: str | Path) -> dict[str, Any]:
    """The header of a .bhm (checksummed), without decoding the tensors."""
    path = Path(path)
    header, _ = read_header(path, path.read_bytes())
    return header


def load_packed(path: str | Path) -> nn.Module:
    """Rebuild the runnable model stored in a .bhm file (eval mode; int8 models on int8 kernels)."""
    from behemoth.compression.rebuild import build_from_packed

    return build_from_packed(read_packed(path))
