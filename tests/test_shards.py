"""Compressed shards on real data: lossless round trips, refused lossy codecs, corruption and truncation
named by file, streaming coverage and shuffling, bounded memory, exact resume, and training from shards."""

import shutil
import time

import numpy as np
import pytest
import torch

from behemoth.config import load_config
from behemoth.data import load_data
from behemoth.data.bundle import DataBundle, TensorSplit
from behemoth.data.shards import ShardDataset, ShardSplit, StreamedSplit, pack_bundle, read_index
from behemoth.errors import BehemothError, ConfigError, DataError
from behemoth.pipeline import run_training
from behemoth.spec import DataSpec
from behemoth.training import BaseHook, train
from behemoth.training.assembly import build_feed
from behemoth.training.feeds import ShardFeed


def digits_config(*overrides: str):
    return load_config(None, ["data.name=digits", "data.batch_size=32", *overrides])


@pytest.fixture(scope="module")
def digit_images():
    return load_data(digits_config().data)


@pytest.fixture(scope="module")
def packed_digits(digit_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "digits"
    pack_bundle(digit_images, out, shard_size=4096)  # ~63 images per shard: 21 train shards
    return out


def numbered(count: int = 1000) -> DataBundle:
    """Samples whose single feature is their row number, so a stream's order and coverage can be read off."""
    x = torch.arange(count, dtype=torch.float32)[:, None]
    split = TensorSplit(x, torch.arange(count) % 10)
    return DataBundle(
        "numbered", DataSpec("classification", (1,), 10), split, None, None, [str(i) for i in range(10)]
    )


@pytest.fixture()
def packed_numbers(tmp_path):
    out = tmp_path / "numbers"
    pack_bundle(
        numbered(), out, codec="lz4", shard_size=1000
    )  # 5 bytes per row: 200 rows per shard, 5 shards
    return out


def train_split(root) -> ShardSplit:
    return ShardSplit(root, "train", read_index(root).splits["train"])


def test_round_trip_is_bit_exact_and_pixels_are_stored_as_uint8(digit_images, packed_digits):
    index = read_index(packed_digits)
    assert index.splits["train"].x_dtype == "uint8" and index.splits["train"].decode is not None
    assert len(index.splits["train"].shards) == 21 and index.splits["train"].count == len(digit_images.train)
    loaded = load_data(
        digits_config(
            "data.name=shards", f"data.path={str(packed_digits)!r}", "data.shards.stream=false"
        ).data
    )
    for name in ("train", "val", "test"):
        original, back = getattr(digit_images, name), getattr(loaded, name)
        assert torch.equal(original.x, back.x) and original.x.dtype == back.x.dtype == torch.float32
        assert torch.equal(original.y, back.y) and back.y.dtype == torch.int64
    assert loaded.spec == digit_images.spec and loaded.class_names == digit_images.class_names


def test_features_that_are_not_pixels_stay_float32(digits_bundle, tmp_path):
    pack_bundle(digits_bundle, tmp_path / "f", shard_size=10_000)
    split = train_split(tmp_path / "f")
    assert split.info.x_dtype == "float32" and split.info.decode is None
    back = split.load()
    assert torch.equal(back.x, digits_bundle.train.x) and torch.equal(back.y, digits_bundle.train.y)


@pytest.mark.parametrize(
    "codec,filter",
    [
        ("zstd", "shuffle"),
        ("lz4", "bitshuffle"),
        ("blosclz", "nofilter"),
        ("zstd", "bytedelta"),
        ("lz4hc", "delta"),
    ],
)
def test_every_lossless_codec_round_trips(digit_images, tmp_path, codec, filter):
    index = pack_bundle(
        digit_images, tmp_path / codec, codec=codec, level=3, filter=filter, shard_size=32 << 10
    )
    assert index.codec == codec and index.filter == filter
    if codec == "zstd":
        assert index.splits["train"].bytes < 0.6 * index.splits["train"].raw_bytes  # it compressed
    assert torch.equal(train_split(tmp_path / codec).load().x, digit_images.train.x)


@pytest.mark.parametrize(
    "options,fragment",
    [
        (dict(codec="zfp_acc"), "codec 'zfp_acc' is lossy"),
        (dict(codec="ZFP_RATE"), "codec 'ZFP_RATE' is lossy"),
        (dict(filter="trunc_prec"), "filter 'trunc_prec' is lossy"),
        (dict(codec="snappy"), "unknown codec 'snappy'"),
    ],
)
def test_lossy_and_unknown_codecs_are_refused(digit_images, tmp_path, options, fragment):
    with pytest.raises(BehemothError, match=fragment):
        pack_bundle(digit_images, tmp_path / "x", **options)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="data.shards.codec = 'zfp_prec'.*lossy"):
        load_config(None, ["data.shards.codec=zfp_prec"])


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_named_by_file_when_read_and_when_streamed(packed_digits, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(packed_digits, broken)
    victim = broken / "train-00007.b2f"
    flip_byte(victim, victim.stat().st_size // 2)
    split = train_split(broken)
    with pytest.raises(DataError, match=r"shard .*train-00007\.b2f is corrupted"):
        split.read(7)
    for prefetch in (True, False):  # the background reader hands its error to the consumer
        stream = ShardDataset(split, seed=0, buffer=100, prefetch=prefetch)
        with pytest.raises(DataError, match=r"train-00007\.b2f is corrupted"):
            for _ in stream.batches(0, 32):
                pass
    flip_byte(broken / "train-labels.b2f", 40)
    with pytest.raises(DataError, match=r"train-labels\.b2f is corrupted"):
        StreamedSplit(split).y


def test_truncated_or_missing_shards_are_named(packed_digits, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(packed_digits, broken)
    victim = broken / "test-00002.b2f"
    victim.write_bytes(victim.read_bytes()[:-10])
    cfg = digits_config("data.name=shards", f"data.path={str(broken)!r}")
    with pytest.raises(
        DataError, match=r"shard .*test-00002\.b2f is truncated or changed: \d+ bytes, the index says"
    ):
        load_data(cfg.data)  # the test split loads eagerly
    victim.unlink()
    with pytest.raises(DataError, match=r"test-00002\.b2f is missing"):
        load_data(cfg.data)
    with pytest.raises(DataError, match="not a shard directory"):
        load_data(digits_config("data.name=shards", f"data.path={str(tmp_path)!r}").data)


def collect(stream: ShardDataset, epoch: int, batch: int, start: int = 0) -> np.ndarray:
    return np.concatenate([x[:, 0] for x, _ in stream.batches(epoch, batch, start)])


def test_stream_covers_every_sample_once_in_a_shuffled_order(packed_numbers):
    stream = ShardDataset(train_split(packed_numbers), seed=3, buffer=150)
    first, second = collect(stream, 0, 64), collect(stream, 1, 64)
    assert np.array_equal(np.sort(first), np.arange(1000)) and np.array_equal(
        np.sort(second), np.arange(1000)
    )
    assert not np.array_equal(first, second)  # a new order every epoch
    assert stream.shard_order(0) != stream.shard_order(1) or stream.shard_order(0) != stream.shard_order(2)
    window = first[:150]
    assert not np.array_equal(window, np.sort(window))  # shuffled within the window
    assert np.array_equal(
        collect(ShardDataset(train_split(packed_numbers), seed=3, buffer=150), 0, 64), first
    )


def test_a_stream_left_early_hands_its_buffers_on_intact(packed_numbers):
    stream = ShardDataset(train_split(packed_numbers), seed=2, buffer=150)
    for number, _ in enumerate(stream.batches(0, 64)):
        if number == 5:
            break  # the background reader stops; the buffers go back to the dataset
    reused = collect(stream, 1, 64)
    assert np.array_equal(
        reused, collect(ShardDataset(train_split(packed_numbers), seed=2, buffer=150), 1, 64)
    )


@pytest.mark.parametrize("start", [0, 1, 64, 149, 150, 201, 640, 999])
def test_stream_resumes_at_any_position(packed_numbers, start):
    stream = ShardDataset(train_split(packed_numbers), seed=1, buffer=150)
    full = collect(stream, 2, 64)
    assert np.array_equal(collect(stream, 2, 64, start), full[start:])


@pytest.mark.parametrize("prefetch,expected", [(True, 3), (False, 2)])
def test_stream_memory_is_two_shard_buffers_and_one_window(packed_numbers, prefetch, expected):
    """Buffers are allocated once per epoch, whatever the number of shards: (2 or 1) shards + 1 window."""
    split = train_split(packed_numbers)
    allocations, reads, allocate, read = [], [], split.buffers, split.read
    split.buffers = lambda count=None: allocations.append(count) or allocate(count)
    split.read = lambda number, into=None: reads.append(number) or read(number, into)
    seen = 0
    for x, _ in ShardDataset(split, seed=0, buffer=50, prefetch=prefetch).batches(0, 10):
        seen += len(x)
        time.sleep(0.002)  # a slow consumer: the background reader has time to run ahead
        assert len(reads) <= seen // 200 + 2  # never more than one shard read ahead of the one in use
    assert seen == 1000 and len(reads) == 5 and len(allocations) == expected


def test_shard_feed_slices_ranks_and_resumes(packed_numbers):
    from behemoth.distributed import DistEnv

    stream = ShardDataset(train_split(packed_numbers), seed=4, buffer=128)
    feed = ShardFeed(stream, batch_size=40, accumulate=2, seed=4, device=torch.device("cpu"))
    assert feed.steps_per_epoch == 1000 // 80
    full = [(step, [b.x[:, 0] for b in batches]) for step, batches in feed.epoch(0)]
    tail = [(step, [b.x[:, 0] for b in batches]) for step, batches in feed.epoch(0, start_step=5)]
    assert [s for s, _ in tail] == list(range(5, 12))
    assert all(torch.equal(a, b) for (_, xa), (_, xb) in zip(full[5:], tail) for a, b in zip(xa, xb))
    halves = [ShardFeed(stream, 40, 2, 4, torch.device("cpu"), DistEnv(rank=r, world_size=2)) for r in (0, 1)]
    for (_, whole), (_, left), (_, right) in zip(full, halves[0].epoch(0), halves[1].epoch(0)):
        for global_x, a, b in zip(whole, left, right):
            assert torch.equal(torch.cat([a.x[:, 0], b.x[:, 0]]), global_x) and a.weight == 0.5


def test_pack_replaces_atomically_and_refuses_without_overwrite(digit_images, packed_numbers):
    before = (packed_numbers / "index.json").read_text()
    with pytest.raises(BehemothError, match="exists: pass --overwrite"):
        pack_bundle(digit_images, packed_numbers)

    def fail(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack_bundle(digit_images, packed_numbers, overwrite=True, shard_size=4096, progress=fail)
    assert (packed_numbers / "index.json").read_text() == before  # the old pack is intact
    pack_bundle(digit_images, packed_numbers, overwrite=True)
    assert read_index(packed_numbers).dataset == "digits"
    assert not [p for p in packed_numbers.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_train_from_streamed_shards_with_augmentation(packed_digits, tmp_path):
    cfg = digits_config(
        "data.name=shards",
        f"data.path={str(packed_digits)!r}",
        f"runs_dir={str(tmp_path)!r}",
        "name=sh",
        "model.name=mlp",
        "train.epochs=6",
        "train.optimizer=adam",
        "train.lr=0.003",
        "data.augment.rotate.p=0.5",
        "data.augment.rotate.degrees=10",
        "data.augment.mixup.p=0.2",
        "data.shards.shuffle_buffer=300",
    )
    summary = run_training(cfg, progress=False)
    assert summary["train_samples"] == 1294 and summary["test"]["acc"] > 0.85
    assert (
        summary["data"]["class_counts"]["train"]
        == torch.bincount(train_split(packed_digits).labels(), minlength=10).tolist()
    )
    with pytest.raises(
        ConfigError, match="data.sampling.kind = 'stratified': needs the training split in memory"
    ):
        build_feed(load_config(None, ["data.sampling.kind=stratified"]), load_data(cfg.data))


def test_language_model_tokens_pack_compactly_and_stream(tmp_path):
    from behemoth.data.describe import describe

    tokens = torch.randint(0, 256, (300, 17), generator=torch.Generator().manual_seed(0))
    split = TensorSplit(tokens[:, :-1], tokens[:, 1:])
    bundle = DataBundle("lm", DataSpec("language_model", (16,), 256), split, None, split)
    pack_bundle(bundle, tmp_path / "lm", shard_size=2048)
    info = read_index(tmp_path / "lm").splits["train"]
    assert (
        info.x_dtype == info.y_dtype == "uint8" and info.labels is None
    )  # byte tokens: 8x smaller than int64
    data = load_data(load_config(None, ["data.name=shards", f"data.path={str(tmp_path / 'lm')!r}"]).data)
    assert describe(data)["tokens"]["train"] == 300 * 16  # statistics work on the streamed split
    feed = ShardFeed(ShardDataset(data.train.shards, seed=0, buffer=64), 50, 1, 0, torch.device("cpu"))
    rows = torch.cat([b.x for _, batches in feed.epoch(0) for b in batches])
    assert rows.dtype == torch.int64 and rows.shape == (300, 16)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, split.x.tolist()))


class Stopper(BaseHook):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, ctx, metrics):
        if ctx.step == self.at:
            raise KeyboardInterrupt


def test_streamed_augmented_run_resumes_bit_for_bit(packed_digits, tmp_path):
    cfg = digits_config(
        "data.name=shards",
        f"data.path={str(packed_digits)!r}",
        "train.epochs=3",
        "train.lr=0.05",
        "train.momentum=0.9",
        "train.checkpoint.every_steps=7",
        "data.shards.shuffle_buffer=200",
        "data.augment.rotate.p=0.5",
        "data.augment.erase.p=0.3",
        "data.augment.cutmix.p=0.3",
    )
    data = load_data(cfg.data)
    assert isinstance(data.train, StreamedSplit)
    model = lambda: torch.nn.Sequential(  # noqa: E731
        torch.nn.Flatten(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(32, 10),
    )

    def run(m, d, **kw):
        return train(m, data, cfg.train, 32, run_dir=tmp_path / d, feed=build_feed(cfg, data), **kw)

    torch.manual_seed(0)
    straight = model()
    run(straight, "a")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        run(model(), "b", hooks=[Stopper(45)])
    latest = tmp_path / "b" / "checkpoints" / (tmp_path / "b" / "checkpoints" / "latest").read_text()
    assert latest.name == "step-00000042"  # mid-epoch (40 steps per epoch)
    torch.manual_seed(123)
    resumed = model()
    run(resumed, "b", resume_from=latest)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_table_lookup_decodes_every_channel_to_the_same_bits_as_the_float_ops():
    from behemoth.data.shards.format import Decode

    decode = Decode(255.0, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
    pixels = torch.randint(
        0, 256, (5, 3, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    looked_up, computed = decode(pixels), decode.compute(pixels)
    assert looked_up.dtype == computed.dtype == torch.float32 and torch.equal(looked_up, computed)
