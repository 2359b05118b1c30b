"""Compressed shards on MNIST: compression ratio per codec, and read throughput of the shard stream against
an in-memory copy of the same data (target: stream >= 50% of memory).

The stream does everything a training epoch needs: read each shard, check its sha256, decompress it (the
next one in a background thread), shuffle by shard and by window, cut batches of 256. Three comparisons,
each epoch alternating between the two sides (same machine load), medians over epochs:
  bytes:   stream batches of the stored uint8 samples   vs the same uint8 arrays in memory, shuffled batches
  decoded: the same, each batch decoded to the loader's normalised float32 (what the feed hands on)
  feed:    behemoth's ShardFeed from shards             vs TensorFeed over the float32 tensors in memory
           (what switching a run to data.name = "shards" costs its data feed)
  cold:    the decoded stream with every shard file evicted from the page cache before the epoch (issue #19:
           the other rows read files just written, from the cache). Eviction: fsync, then
           posix_fadvise(POSIX_FADV_DONTNEED); the "raw read" columns check it worked, timing a plain read
           of the files right after eviction against one from the cache (on a virtual disk the host may
           still cache them: the check shows it).
Writes bench/results/shards.json (every epoch's speeds; medians).

Run: .venv/bin/python bench/shards.py [--codecs zstd lz4 blosclz] [--shard-size 8MiB] [--epochs 9]
     [--threads N]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.config import (
    DataConfig,  # noqa: E402
    parse_size,  # noqa: E402
)
from behemoth.data import load_data  # noqa: E402
from behemoth.data.sampling import keyed_generator  # noqa: E402
from behemoth.data.shards import ShardDataset, ShardSplit, pack_bundle  # noqa: E402
from behemoth.training.feed import TensorFeed  # noqa: E402
from behemoth.training.feeds import ShardFeed  # noqa: E402
from bench.results import spread, write_result  # noqa: E402

CPU = torch.device("cpu")


def stream_epoch(stream: ShardDataset, epoch: int, batch: int, decode: bool) -> float:
    """Samples per second through one epoch of the shard stream (one dataset across epochs, as in
    training)."""
    start, count = time.perf_counter(), 0
    for x, y in stream.batches(epoch, batch):
        if decode:
            stream.split.to_tensors(x, y)
        count += len(x)
    return count / (time.perf_counter() - start)


def memory_epoch(
    split: ShardSplit, x_all: np.ndarray, y_all: np.ndarray, epoch: int, batch: int, decode: bool
) -> float:
    """Samples per second through one epoch of the same stored arrays held in memory, shuffled per epoch."""
    start = time.perf_counter()
    order = torch.randperm(len(x_all), generator=keyed_generator(0, "memory", epoch)).numpy()
    for first in range(0, len(order), batch):
        rows = order[first : first + batch]
        x, y = x_all[rows], y_all[rows]
        if decode:
            split.to_tensors(x, y)
    return len(order) / (time.perf_counter() - start)


def feed_epoch(feed, epoch: int) -> float:
    start, count = time.perf_counter(), 0
    for _, batches in feed.epoch(epoch):
        count += sum(len(b.y) for b in batches)
    return count / (time.perf_counter() - start)


def evict(files: list[Path]) -> None:
    """Drop the files' pages from the page cache (they must be clean: fsync first)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(files: list[Path]) -> float:
    """MB/s of a plain read of the files (no checks, no decompression)."""
    start, count = time.perf_counter(), 0
    for path in files:
        count += len(path.read_bytes())
    return count / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--codecs", nargs="+", default=["zstd", "lz4", "blosclz"])
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--shard-size", default="8MiB")
    parser.add_argument("--buffer", type=int, default=16384, help="shuffle window of the stream (samples)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(DataConfig(name="mnist", val_fraction=0.0))  # 60000 train + 10000 test
    float_bytes = data.train.x.numel() * 4 + data.train.y.numel() * 8
    print(
        f"MNIST train: {len(data.train):,} samples, {float_bytes / 2**20:.1f} MiB as float32 tensors; "
        f"shards of {args.shard_size}, level {args.level}, shuffle filter; batch {args.batch}; "
        f"{torch.get_num_threads()} torch threads; {args.epochs} interleaved epochs, medians (samples/s)"
    )
    header = f"{'codec':8s} {'packed':>9s} {'ratio':>6s} {'vs f32':>7s} {'pack s':>6s}"
    for name in ("bytes", "decoded", "feed", "cold"):
        header += f" | {name + ' stream':>15s} {'memory':>10s} {'ratio':>5s}"
    print(header + f" | {'raw read MB/s cold':>18s} {'warm':>6s}")
    figures: dict[str, dict] = {}
    memory_feed = TensorFeed(data.train, args.batch, 1, seed=0, device=CPU)
    with tempfile.TemporaryDirectory(prefix="behemoth-bench-shards-") as tmp:
        for codec in args.codecs:
            out = Path(tmp) / codec
            started = time.perf_counter()
            index = pack_bundle(
                data, out, codec=codec, level=args.level, shard_size=parse_size(args.shard_size)
            )
            pack_seconds = time.perf_counter() - started
            info = index.splits["train"]
            split = ShardSplit(out, "train", info)
            x_all, y_all = split.buffers(len(split))  # the same bytes, decompressed, in memory
            first = 0
            for number, shard in enumerate(info.shards):
                split.read(number, (x_all[first:], y_all[first:]))
                first += shard.count
            stream = ShardDataset(split, seed=0, buffer=args.buffer)
            stream_feed = ShardFeed(ShardDataset(split, seed=0, buffer=args.buffer), args.batch, 1, 0, CPU)
            files = sorted(p for p in out.rglob("*") if p.is_file())

            def cold_epoch(epoch: int) -> float:
                evict(files)
                return stream_epoch(stream, epoch, args.batch, True)

            def cold_read(_: int) -> float:
                evict(files)
                return raw_read(files)

            runs = {
                "bytes stream": lambda e: stream_epoch(stream, e, args.batch, False),
                "bytes memory": lambda e: memory_epoch(split, x_all, y_all, e, args.batch, False),
                "decoded stream": lambda e: stream_epoch(stream, e, args.batch, True),
                "decoded memory": lambda e: memory_epoch(split, x_all, y_all, e, args.batch, True),
                "feed stream": lambda e: feed_epoch(stream_feed, e),
                "feed memory": lambda e: feed_epoch(memory_feed, e),
                "cold stream": cold_epoch,
                "cold memory": lambda e: memory_epoch(split, x_all, y_all, e, args.batch, True),
                "raw read cold": cold_read,
                "raw read warm": lambda e: raw_read(files),
            }
            for run in runs.values():  # warm-up: page cache, buffers
                run(99)
            speeds: dict[str, list[float]] = {name: [] for name in runs}
            for epoch in range(args.epochs):
                for name, run in runs.items():
                    speeds[name].append(run(epoch))
            m = {name: statistics.median(values) for name, values in speeds.items()}
            row = (
                f"{codec:8s} {info.bytes / 2**20:6.2f}MiB {info.raw_bytes / info.bytes:5.2f}x "
                f"{float_bytes / info.bytes:6.1f}x {pack_seconds:6.2f}"
            )
            for name in ("bytes", "decoded", "feed", "cold"):
                stream_speed, memory_speed = m[f"{name} stream"], m[f"{name} memory"]
                row += f" | {stream_speed:15,.0f} {memory_speed:10,.0f} {stream_speed / memory_speed:5.0%}"
            print(row + f" | {m['raw read cold']:18,.0f} {m['raw read warm']:6,.0f}", flush=True)
            figures[codec] = {
                "packed_bytes": info.bytes,
                "ratio": info.raw_bytes / info.bytes,
                "vs_float32": float_bytes / info.bytes,
                "pack_seconds": pack_seconds,
                **{
                    f"{name}_ratio": m[f"{name} stream"] / m[f"{name} memory"]
                    for name in ("bytes", "decoded", "feed", "cold")
                },
                "samples_per_second": {name: spread(values) for name, values in speeds.items()},
            }
    print(
        f"ratio: stored uint8 bytes / packed bytes ({info.raw_bytes / 2**20:.1f} MiB stored); "
        "vs f32: the float32 tensors a run holds in memory / packed bytes"
    )
    write_result(
        "shards",
        figures,
        {
            "training_precision": "n/a (data feed only)",
            "evaluation_precision": "n/a",
            "repeats": f"{args.epochs} interleaved epochs per side; stream / memory = ratio of medians",
            "deviations": [],
        },
        reduced=None
        if args.epochs >= 9 and len(args.codecs) == 3
        else f"{args.epochs} epochs, codecs {args.codecs}",
    )
    print(
        f"reproduce: .venv/bin/python bench/shards.py --codecs {' '.join(args.codecs)} "
        f"--shard-size {args.shard_size}"
        f" --epochs {args.epochs}" + (f" --threads {args.threads}" if args.threads else "")
    )


if __name__ == "__main__":
    main()
