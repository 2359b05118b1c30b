"""Read shards back: verified (size and sha256 before decompression), in memory or streamed.

`ShardDataset` streams one split with bounded memory: two shard buffers (the shard being read and the
next, decompressed by a background thread) and one shuffle window, allocated once and reused from shard
to shard and epoch to epoch, plus the batches it hands out. An epoch's order is a pure function of
(seed, epoch): the shard order is a seeded permutation, the stream is cut into windows of `buffer`
samples, and each window is permuted by its own seeded generator. A stream resumes at any sample
position by computing which shard and window hold it: nothing before it is read.

Why reuse buffers: on this kind of machine (a VM) a fresh multi-megabyte array costs a page fault per
4 KiB when first written, which made a streamed MNIST epoch ~2x slower than the decompression itself.
"""

import os
import queue
import threading
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path

import blosc2
import numpy as np
import torch

from behemoth.data.bundle import TensorSplit
from behemoth.data.sampling import keyed_generator
from behemoth.data.shards.format import ShardInfo, SplitInfo, inside, sha256
from behemoth.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]  # (x, y) in their stored dtypes


def read_verified(path: Path, info: ShardInfo) -> bytes:
    """The shard's bytes, after checking their size and sha256 against the index (DataError naming the
    file). The size is checked before reading, so a wrong file costs no more memory than the index says."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(size + 1) if size == info.bytes else b""
    except FileNotFoundError:
        raise DataError(f"shard {path} is missing (listed in the index)") from None
    except OSError as exc:
        raise DataError(f"shard {path} cannot be read: {exc}") from None
    if size != info.bytes or len(data) != info.bytes:
        size = len(data) if size == info.bytes else size  # changed while read
        raise DataError(f"shard {path} is truncated or changed: {size} bytes, the index says {info.bytes}")
    if sha256(data) != info.sha256:
        raise DataError(f"shard {path} is corrupted: its sha256 does not match the index")
    return data


def decompress_into(chunk: memoryview, out: np.ndarray, path: Path) -> np.ndarray:
    """Decompress one blosc2 chunk into `out` (C-contiguous), after checking its header's size matches."""
    try:
        size = blosc2.get_cbuffer_sizes(chunk)[0]
        if size != out.nbytes:  # never let blosc2 write past the buffer
            raise DataError(f"shard {path} holds a {size}-byte array where the index says {out.nbytes}")
        blosc2.decompress2(chunk, dst=out)
    except DataError:
        raise
    except Exception as exc:  # blosc2 raises RuntimeError/ValueError for chunks it cannot parse
        raise DataError(f"shard {path} cannot be decompressed: {exc}") from None
    return out


class ShardSplit:
    """One split of a shard directory: its index entry, verified reads, and decoding to the loader's
    tensors."""

    def __init__(self, root: Path, name: str, info: SplitInfo) -> None:
        self.root, self.name, self.info = Path(root), name, info
        self.largest = max((s.count for s in info.shards), default=0)

    def __len__(self) -> int:
        return self.info.count

    def buffers(self, count: int | None = None) -> Arrays:
        """Empty (x, y) arrays for `count` samples (default: the largest shard) in the stored dtypes."""
        count = self.largest if count is None else count
        return (
            np.empty((count, *self.info.x_shape), self.info.x_dtype),
            np.empty((count, *self.info.y_shape), self.info.y_dtype),
        )

    def read(self, number: int, into: Arrays | None = None) -> Arrays:
        """Shard `number`'s (x, y), verified and decompressed (into the front of `into` when given)."""
        info = self.info.shards[number]
        path = inside(self.root, info.file, f"split {self.name!r} shard {number} file")
        data = memoryview(read_verified(path, info))
        x_out, y_out = into if into is not None else self.buffers(info.count)
        x, y = x_out[: info.count], y_out[: info.count]
        decompress_into(data[: info.x_bytes], x, path)
        decompress_into(data[info.x_bytes :], y, path)
        return x, y

    def labels(self) -> torch.Tensor:
        """All class labels (N,) int64 from the labels file, verified (no x is read)."""
        info = self.info.labels
        if info is None:
            raise DataError(
                f"{self.root}: split {self.name!r} has no labels file (not a classification split)"
            )
        path = inside(self.root, info.file, f"split {self.name!r} labels file")
        labels = np.empty(info.count, self.info.y_dtype)
        decompress_into(memoryview(read_verified(path, info)), labels, path)
        return torch.from_numpy(labels).long()

    def to_tensors(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored arrays -> the tensors the original loader produced (float32 images/features, int64
        labels)."""
        x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
        if self.info.decode is not None:
            x_t = self.info.decode(x_t)
        elif not x_t.is_floating_point():
            x_t = x_t.long()
        return x_t, (y_t if y_t.is_floating_point() else y_t.long())

    def load(self) -> TensorSplit:
        """The whole split in memory (every shard verified)."""
        x, y = self.buffers(len(self))
        start = 0
        for number, info in enumerate(self.info.shards):
            self.read(number, (x[start:], y[start:]))
            start += info.count
        return TensorSplit(*self.to_tensors(x, y))


def load_ahead(split: ShardSplit, order: list[int], buffers: list[Arrays]) -> Iterator[Arrays]:
    """Shards in `order`, decompressed into `buffers` (each big enough for the largest shard).

    With one buffer set, shards are read when asked for. With two, the next shard is read by a background
    thread while the consumer uses the current one: the worker fills a free set, and a set is free again
    when the consumer asks for the next shard (so the consumer must keep no view of it after that).
    """
    if len(buffers) == 1:
        for number in order:
            yield split.read(number, buffers[0])
        return
    # let the consumer run while the worker decompresses (blosc2 keeps the GIL by default; its docs advise
    # releasing it for large chunks read from a thread, which is this case; process-wide, and idempotent)
    blosc2.set_releasegil(True)
    free, results, stop = queue.Queue(), queue.Queue(), threading.Event()
    for buffer_set in buffers:
        free.put(buffer_set)
    done = object()

    def work() -> None:
        for number in order:
            while True:
                if stop.is_set():
                    return
                try:
                    buffers = free.get(timeout=0.1)
                    break
                except queue.Empty:
                    continue
            try:
                results.put((buffers, split.read(number, buffers)))
            except BaseException as exc:  # handed to the consumer, raised there
                results.put(exc)
                return
        results.put(done)

    worker = threading.Thread(target=work, name="behemoth-shard-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = results.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            buffers, arrays = item
            del item
            yield arrays
            del arrays
            free.put(buffers)  # the consumer is back for the next shard: it is done with this one
    finally:
        stop.set()
        worker.join()  # it stops before its next shard; the buffers must not be handed on while it writes


class ShardDataset:
    """Streams one split of a shard directory: seeded shard order, windowed shuffle, exact resume."""

    def __init__(self, split: ShardSplit, seed: int, buffer: int = 16384, prefetch: bool = True) -> None:
        if buffer < 1:
            raise ValueError(f"buffer = {buffer}: must be at least 1 sample")
        self.split, self.seed, self.buffer, self.prefetch = split, seed, buffer, prefetch
        self.counts = [s.count for s in split.info.shards]
        self._spare: list[Arrays] = []  # buffers of finished epochs, reused by the next (allocated once)
        self._lock = threading.Lock()

    def _take(self, count: int) -> Arrays:
        with self._lock:
            for i, (x, _) in enumerate(self._spare):
                if len(x) >= count:
                    return self._spare.pop(i)
        return self.split.buffers(count)

    def _give(self, buffers: list[Arrays]) -> None:
        with self._lock:
            self._spare.extend(buffers)

    def __len__(self) -> int:
        return len(self.split)

    def shard_order(self, epoch: int) -> list[int]:
        return torch.randperm(
            len(self.counts), generator=keyed_generator(self.seed, "shards", epoch)
        ).tolist()

    def window_permutation(self, epoch: int, window: int, size: int) -> np.ndarray:
        return torch.randperm(size, generator=keyed_generator(self.seed, "window", epoch, window)).numpy()

    def _windows(self, epoch: int, start: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(x, y, order) per window from the one containing `start`: x and y hold the window's samples in
        stream order in a buffer reused for the next window; order (from `start` on) says how to visit
        them."""
        total = len(self)
        if start >= total:
            return
        order = self.shard_order(epoch)
        bounds = np.cumsum([0] + [self.counts[i] for i in order])  # stream position where each shard starts
        first = start // self.buffer
        shard = bisect_right(bounds, first * self.buffer) - 1  # the shard holding the window's start
        window = self._take(min(self.buffer, total))
        window_x, window_y = window
        shard_buffers = [self._take(self.split.largest) for _ in range(2 if self.prefetch else 1)]
        shards = load_ahead(self.split, order[shard:], shard_buffers)
        try:
            x, y = next(shards)
            for number in range(first, -(-total // self.buffer)):
                low, high = number * self.buffer, min((number + 1) * self.buffer, total)
                position = low
                while position < high:  # copy the window's stretch of the stream, shard by shard
                    while position >= bounds[shard + 1]:
                        x = y = None
                        x, y = next(shards)
                        shard += 1
                    take = min(high, bounds[shard + 1]) - position
                    offset, into = position - bounds[shard], position - low
                    window_x[into : into + take] = x[offset : offset + take]
                    window_y[into : into + take] = y[offset : offset + take]
                    position += take
                visit = self.window_permutation(epoch, number, high - low)
                yield (
                    window_x[: high - low],
                    window_y[: high - low],
                    visit[start - low :] if number == first else visit,
                )
        finally:
            shards.close()  # joins the background reader: the buffers are free after this
            x = y = None
            self._give([window, *shard_buffers])

    def batches(self, epoch: int, batch_size: int, start: int = 0) -> Iterator[Arrays]:
        """Consecutive batches (fresh arrays) of the epoch's stream from position `start`; the last may be
        short."""
        carry_x: list[np.ndarray] = []
        carry_y: list[np.ndarray] = []
        carried = 0
        windows = self._windows(epoch, start)
        try:
            for x, y, visit in windows:
                i = 0
                if carried:  # a batch that spans two windows
                    i = min(batch_size - carried, len(visit))
                    carry_x.append(x[visit[:i]])
                    carry_y.append(y[visit[:i]])
                    carried += i
                    if carried < batch_size:
                        continue
                    yield np.concatenate(carry_x), np.concatenate(carry_y)
                    carry_x, carry_y, carried = [], [], 0
                while i + batch_size <= len(visit):
                    rows = visit[i : i + batch_size]
                    yield x[rows], y[rows]  # fancy indexing: a copy, so the window buffer can be reused
                    i += batch_size
                if i < len(visit):
                    carry_x, carry_y, carried = [x[visit[i:]]], [y[visit[i:]]], len(visit) - i
            if carried:
                yield np.concatenate(carry_x), np.concatenate(carry_y)
        finally:
            windows.close()  # stops the background reader when the consumer stops early
