"""Compressed, checksummed shards: `pack_bundle` writes them (blosc2, lossless codecs only), `ShardSplit`
reads them back verified, `ShardDataset` streams them with bounded memory and exact mid-epoch resume,
and `load_shards` makes a shard directory a dataset (data.name = "shards")."""

from behemoth.data.shards.format import INDEX, ShardIndex, read_index
from behemoth.data.shards.reader import ShardDataset, ShardSplit
from behemoth.data.shards.source import StreamedSplit, load_shards
from behemoth.data.shards.writer import pack_bundle

__all__ = [
    "INDEX",
    "ShardDataset",
    "ShardIndex",
    "ShardSplit",
    "StreamedSplit",
    "load_shards",
    "pack_bundle",
    "read_index",
]
