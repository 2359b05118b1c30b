"""Reader for the IDX format of (Fashion-)MNIST: a big-endian header, then raw unsigned bytes."""

import gzip
import zlib
from pathlib import Path

import numpy as np

from behemoth.errors import DataError

UBYTE = 0x08  # the only element type the MNIST family uses


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in an IDX file (gzipped or not), checked against its header.

    Magic number: two zero bytes, the element type (0x08 = ubyte), the number of dimensions;
    e.g. 0x00000803 for (N, rows, cols) images and 0x00000801 for (N,) labels.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    expected_magic = (UBYTE << 8) | ndim
    header = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != expected_magic:
        found = "none (file too short)" if magic is None else f"{magic:#010x}"
        raise DataError(
            f"{path}: not an IDX file of {ndim}-d bytes"
            f" (magic number {found}, expected {expected_magic:#010x})"
        )
    if len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    payload = len(raw) - header
    if payload != int(np.prod(dims)):
        raise DataError(
            f"{path}: header says shape {dims} ({int(np.prod(dims))} bytes)"
            f" but the file holds {payload} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
