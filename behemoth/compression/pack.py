"""`load_packed`: a .bhm file back to a runnable nn.Module (float, or int8 on torch.ao's kernels).

The format itself lives in pack_format.py (framing, header, layouts) and pack_records.py (the record
kinds); rebuild.py builds the model. This module sits above all three, so none of them imports it back,
and it keeps the names importers have always taken from `behemoth.compression.pack`.
"""

from pathlib import Path

from torch import nn

from behemoth.compression.pack_format import (
    PackedFileError,
    PackedModel,
    decode,
    encode,
    packed_info,
    read_header,
    read_packed,
    save_packed,
)
from behemoth.compression.pack_records import Int8Weight, Record
from behemoth.compression.pack_weight_only_records import Int4WeightOnly, Int8WeightOnly
from behemoth.compression.rebuild import build_from_packed

__all__ = [
    "Int4WeightOnly",
    "Int8Weight",
    "Int8WeightOnly",
    "PackedFileError",
    "PackedModel",
    "Record",
    "decode",
    "encode",
    "load_packed",
    "packed_info",
    "read_header",
    "read_packed",
    "save_packed",
]


def load_packed(path: str | Path) -> nn.Module:
    """Rebuild the runnable model stored in a .bhm file (eval mode; int8 models on int8 kernels, weight-only
    int8/int4 language models on torch's weight-only kernels). Nothing in the file runs as code; tensors
    that do not fit the model's layers are refused."""
    packed = read_packed(path)
    try:
        return build_from_packed(packed)
    except PackedFileError as exc:
        raise PackedFileError(f"{path}: {exc}") from None
