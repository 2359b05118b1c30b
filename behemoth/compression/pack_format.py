"""The `.bhm` artifact format: a compressed model in one checksummed file. This module reads and writes
the bytes; pack.py's `load_packed` turns them back into a runnable nn.Module (float, or int8 on torch.ao's
kernels), and rebuild.py goes between live models and PackedModel.

Layout (little endian):
    b"BHM1" | u32 header bytes | u32 CRC-32 of the header | header (zlib JSON) | payload (streams)
The header holds the model's config (zoo name and options; a Hugging Face model's config.json), the data
spec, the layer shapes (a structurally pruned model is rebuilt at its pruned size), the runtime (float /
int8_static / int8_dynamic with its activation scales / weight_only), the weight ties (an alias is stored
once) and, per tensor, its record kind (pack_records.KINDS) and where its streams lie in the payload with
a CRC-32 of each.

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

from behemoth.compression import coding
from behemoth.compression.pack_record_kind import Payload, RecordKind, stream_values, symbol_stream
from behemoth.compression.pack_records import KINDS, Record, kind_of
from behemoth.errors import BehemothError
from behemoth.files import atomic_write_bytes
from behemoth.spec import DataSpec

MAGIC = b"BHM1"
PREFIX = struct.Struct("<4sII")  # magic, header length, header CRC-32
CODES = ("none", "huffman", "zstd")


class PackedFileError(BehemothError):
    """A .bhm file is corrupted, truncated or not a .bhm file."""


@dataclass
class PackedModel:
    """Everything a .bhm holds, in memory."""

    model_name: str
    model_options: dict[str, Any]
    spec: DataSpec
    tensors: dict[str, Record]
    shapes: dict[str, list[int]]  # float state-dict shapes (to rebuild pruned layers at their size)
    runtime: str = "float"  # float | int8_static | int8_dynamic | weight_only
    engine: str = "x86"
    per_channel: bool = True
    # int8_static: layer -> [scale, zero_point]
    activations: dict[str, list[float]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)  # alias -> stored name (weight tying: stored once)
    # a Hugging Face causal LM (model name "hf"): its config.json, so the file rebuilds the architecture
    # with transformers' own classes and needs neither the model directory nor any code from it
    hf_config: dict[str, Any] | None = None


# ----- writing -----


def _encode_layout(
    name: str, record: Record, kind: RecordKind, positions: np.ndarray | None, code: str
) -> tuple[dict[str, Any], Payload]:
    """One layout of a record, (header entry, streams): dense (positions None) or sparse at `positions`."""
    payload = Payload()
    layout = "dense" if positions is None else "sparse"
    entry: dict[str, Any] = {"name": name, "layout": layout, "streams": {}}
    entry.update(kind.fields(record))
    entry["streams"].update(kind.side_streams(record, payload))
    if positions is not None:
        bits = coding.best_index_bits(positions, kind.value_bits(record))
        gaps = coding.relative_indices(positions, bits)
        entry.update(nonzeros=int(positions.size), index_bits=bits)
        entry["streams"]["gaps"] = symbol_stream(gaps, 1 << bits, code, payload, count=int(gaps.size))
    entry["streams"]["values"] = kind.values_stream(record, positions, code, payload)
    return entry, payload


def _encode_record(name: str, record: Record, code: str) -> tuple[dict[str, Any], list[bytes]]:
    """The smaller of the dense and sparse encodings of a record (dense on a tie): (header entry, streams)."""
    kind = kind_of(record)
    candidates = [_encode_layout(name, record, kind, None, code)]
    if kind.may_be_sparse(record):
        positions = kind.nonzero_positions(record)
        if positions.size < 0.5 * kind.numel(record):
            candidates.append(_encode_layout(name, record, kind, positions, code))
    entry, payload = min(candidates, key=lambda candidate: candidate[1].size)
    return entry, payload.parts


def encode(packed: PackedModel, code: str = "huffman") -> bytes:
    """The .bhm bytes of `packed` (see the module docstring for the layout)."""
    if code not in CODES:
        raise ValueError(f"code = {code!r}: expected none, huffman or zstd")
    entries, parts, offset = [], [], 0
    for name, record in packed.tensors.items():
        entry, streams = _encode_record(name, record, code)
        for stream in entry["streams"].values():
            stream["offset"] += offset
        offset += sum(len(s) for s in streams)
        entries.append(entry)
        parts.extend(streams)
    header = {
        "format": 1,
        "model": {"name": packed.model_name, "options": packed.model_options},
        "spec": asdict(packed.spec),
        "shapes": packed.shapes,
        "runtime": packed.runtime,
        "engine": packed.engine,
        "per_channel": packed.per_channel,
        "activations": packed.activations,
        "class_names": packed.class_names,
        "meta": packed.meta,
        "tied": packed.tied,
        "hf_config": packed.hf_config,
        "code": code,
        "tensors": entries,
        "payload_bytes": offset,
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
    """The checked header of .bhm bytes and the payload after it; `path` names the file in errors."""
    if len(data) < PREFIX.size or data[:4] != MAGIC:
        raise PackedFileError(f"{path}: not a behemoth packed model (.bhm): bad magic bytes")
    _, length, crc = PREFIX.unpack_from(data)
    header_bytes = data[PREFIX.size : PREFIX.size + length]
    if len(header_bytes) != length:
        raise PackedFileError(f"{path}: truncated: the header needs {length} bytes, the file has {len(data)}")
    if zlib.crc32(header_bytes) != crc:
        raise PackedFileError(f"{path}: checksum mismatch in the header: the file is corrupted")
    header = json.loads(zlib.decompress(header_bytes))
    payload = memoryview(data)[PREFIX.size + length :]
    if len(payload) != header["payload_bytes"]:
        raise PackedFileError(
            f"{path}: truncated or padded: payload has {len(payload)} bytes, "
            f"header says {header['payload_bytes']}"
        )
    return header, payload


def _stream(path: Path, payload: memoryview, entry: dict[str, Any], key: str) -> bytes:
    stream = entry["streams"][key]
    data = bytes(payload[stream["offset"] : stream["offset"] + stream["length"]])
    if len(data) != stream["length"] or zlib.crc32(data) != stream["crc32"]:
        raise PackedFileError(
            f"{path}: checksum mismatch in tensor {entry['name']} ({key}): the file is corrupted"
        )
    return data


def _decode_entry(path: Path, payload: memoryview, entry: dict[str, Any]) -> Record:
    """One header entry back to its record: the layout here, the rest by the entry's kind."""
    kind = KINDS.get(entry["kind"])
    if kind is None:
        raise PackedFileError(
            f"{path}: tensor {entry['name']} has kind {entry['kind']!r}, which this "
            f"version does not know (known: {', '.join(KINDS)})"
        )

    def read(key: str) -> bytes:
        return _stream(path, payload, entry, key)

    positions = None
    count = int(np.prod(entry["shape"], dtype=np.int64))
    if entry["layout"] == "sparse":
        gaps_info = entry["streams"]["gaps"]
        gaps = coding.decode_symbols(
            read("gaps"), gaps_info["alphabet"], gaps_info["count"], gaps_info["coding"]
        )
        positions, count = coding.absolute_positions(gaps, entry["index_bits"]), entry["nonzeros"]
    values = stream_values(entry["streams"]["values"], read("values"), count)
    return kind.decode(entry, values, positions, read)


def decode(data: bytes, path: str | Path = "<bytes>") -> PackedModel:
    """Parse and verify .bhm bytes (every stream's CRC-32); raises PackedFileError naming `path`."""
    path = Path(path)
    header, payload = read_header(path, data)
    try:
        tensors = {entry["name"]: _decode_entry(path, payload, entry) for entry in header["tensors"]}
    except PackedFileError:
        raise
    except (ValueError, KeyError, zlib.error) as exc:  # CRCs passed, decoding failed: writer bug or tampering
        raise PackedFileError(f"{path}: cannot decode: {exc}") from None
    spec = header["spec"]
    return PackedModel(
        header["model"]["name"],
        header["model"]["options"],
        DataSpec(spec["task"], tuple(spec["input_shape"]), spec["num_classes"]),
        tensors,
        header["shapes"],
        header["runtime"],
        header["engine"],
        header["per_channel"],
        header["activations"],
        header["class_names"],
        header["meta"],
        dict(header.get("tied", {})),  # files written before weight tying was stored have none
        header.get("hf_config"),
    )


def read_packed(path: str | Path) -> PackedModel:
    """Parse and verify a .bhm file (every stream's CRC-32); raises PackedFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PackedFileError(f"{path}: no such packed model")
    return decode(path.read_bytes(), path)


def packed_info(path: str | Path) -> dict[str, Any]:
    """The header of a .bhm (checksummed), without decoding the tensors."""
    path = Path(path)
    if not path.is_file():
        raise PackedFileError(f"{path}: no such packed model")
    header, _ = read_header(path, path.read_bytes())
    return header
