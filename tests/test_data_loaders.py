"""The built-in datasets on their real files: counts, shapes, dtypes, labels, normalisation, seeded splits."""

import json

import numpy as np
import pytest
import torch

from behemoth.config import DataConfig
from behemoth.data import DataBundle, DatasetInfo, TensorSplit, list_datasets, load_data, sources
from behemoth.data.text import ByteTokenizer
from behemoth.spec import DataSpec


def fingerprints(pixels: np.ndarray) -> np.ndarray:
    """One float per sample, equal for equal samples: compares sets of images without Python loops."""
    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    return np.sort(flat @ np.random.default_rng(0).standard_normal(flat.shape[1]))


def pixels(split: TensorSplit, mean: float, std: float, scale: float) -> np.ndarray:
    """Undo the normalisation: the source's own pixel values, rounded back to integers."""
    return torch.round((split.x * std + mean) * scale).to(torch.int64).numpy()


@pytest.fixture(scope="module")
def raw_mnist() -> dict[str, np.ndarray]:
    """MNIST read straight from the package's zarr zip, independently of the loader."""
    import zarr

    store = zarr.storage.ZipStore(sources.mnist_zip(), mode="r")
    group = zarr.open_group(store, mode="r")
    return {key: group[key][:] for key in ("train_images", "train_labels", "test_images", "test_labels")}


@pytest.fixture(scope="module")
def mnist() -> DataBundle:
    return load_data(DataConfig(name="mnist", val_fraction=0.1, split_seed=0))


def test_mnist_counts_shapes_and_dtypes(mnist):
    assert isinstance(mnist, DataBundle) and mnist.name == "mnist"
    assert mnist.spec == DataSpec("classification", (1, 28, 28), 10)
    assert mnist.train.x.shape == (54000, 1, 28, 28) and mnist.val.x.shape == (6000, 1, 28, 28)
    assert mnist.test.x.shape == (10000, 1, 28, 28)
    for split in mnist.splits().values():
        assert (
            split.x.dtype == torch.float32 and split.y.dtype == torch.int64 and split.y.shape == (len(split),)
        )
        assert split.y.min() == 0 and split.y.max() == 9
    assert mnist.class_names == [str(i) for i in range(10)]


def test_mnist_uses_the_classic_normalisation(mnist):
    assert (
        mnist.meta["mean"] == [0.1307]
        and mnist.meta["std"] == [0.3081]
        and mnist.meta["input_scale"] == 255.0
    )
    assert abs(mnist.train.x.mean().item()) < 0.01 and abs(mnist.train.x.std().item() - 1) < 0.01
    assert mnist.train.x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)  # black pixels
    assert mnist.train.x.max().item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-5)  # white pixels


def test_mnist_train_and_val_partition_the_original_training_set(mnist, raw_mnist):
    """train + val hold exactly the 60000 original images (none lost, none twice); test is the official
    one."""
    both = np.concatenate([pixels(mnist.train, 0.1307, 0.3081, 255), pixels(mnist.val, 0.1307, 0.3081, 255)])
    assert np.array_equal(fingerprints(both), fingerprints(raw_mnist["train_images"]))
    labels = torch.cat([mnist.train.y, mnist.val.y])
    assert torch.bincount(labels).tolist() == np.bincount(raw_mnist["train_labels"]).tolist()
    assert np.array_equal(pixels(mnist.test, 0.1307, 0.3081, 255)[:, 0], raw_mnist["test_images"])
    assert np.array_equal(mnist.test.y.numpy(), raw_mnist["test_labels"])


def test_val_split_is_seeded(mnist):
    same = load_data(DataConfig(name="mnist", val_fraction=0.1, split_seed=0, train_limit=500))
    other = load_data(DataConfig(name="mnist", val_fraction=0.1, split_seed=1, train_limit=500))
    assert torch.equal(same.val.y, mnist.val.y) and torch.equal(same.val.x, mnist.val.x)
    assert torch.equal(same.train.x, mnist.train.x[:500])  # train_limit keeps the first N after the split
    assert not torch.equal(other.val.y, mnist.val.y)


def test_limits_and_no_val():
    data = load_data(DataConfig(name="mnist", val_fraction=0.0, train_limit=300, test_limit=70))
    assert data.val is None and len(data.train) == 300 and len(data.test) == 70
    assert set(data.splits()) == {"train", "test"}


@pytest.mark.skipif(
    bool(sources.fashion_missing()),
    reason="Fashion-MNIST files absent: sudo apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist():
    data = load_data(DataConfig(name="fashion_mnist", val_fraction=0.0))
    assert data.train.x.shape == (60000, 1, 28, 28) and data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert torch.bincount(data.train.y).tolist() == [6000] * 10  # Fashion-MNIST is exactly balanced
    assert torch.bincount(data.test.y).tolist() == [1000] * 10
    assert (
        data.class_names[0] == "T-shirt/top"
        and data.class_names[9] == "Ankle boot"
        and len(data.class_names) == 10
    )
    assert abs(data.train.x.mean().item()) < 1e-3 and abs(data.train.x.std().item() - 1) < 1e-3
    assert data.meta["mean"][0] == pytest.approx(0.2860, abs=1e-3)  # the published Fashion-MNIST statistics
    assert data.meta["std"][0] == pytest.approx(0.3530, abs=1e-3)


@pytest.fixture(scope="module")
def raw_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_split_counts_and_normalisation(raw_digits):
    data = load_data(DataConfig(name="digits", val_fraction=0.1, split_seed=0))
    assert data.spec.input_shape == (1, 8, 8) and data.spec.num_classes == 10
    assert len(data.test) == 359 and len(data.train) + len(data.val) == 1797 - 359
    test_share = torch.bincount(data.test.y, minlength=10).float() / torch.from_numpy(
        np.bincount(raw_digits.target)
    )
    assert ((test_share - 0.2).abs() < 0.01).all()  # stratified: 20% of every class
    assert abs(data.train.x.mean().item()) < 1e-4 and abs(data.train.x.std(correction=0).item() - 1) < 1e-4
    mean, std = data.meta["mean"][0], data.meta["std"][0]
    assert 0 < mean < 16 and 0 < std < 16  # kept in the source's units (0..16), as predict expects
    everything = np.concatenate([pixels(s, mean, std, 1.0) for s in data.splits().values()])
    assert np.array_equal(
        fingerprints(everything), fingerprints(raw_digits.images)
    )  # a partition of all 1797


def test_digits_test_split_is_disjoint_and_seeded(raw_digits):
    a = load_data(DataConfig(name="digits", val_fraction=0.2, split_seed=5))
    b = load_data(DataConfig(name="digits", val_fraction=0.2, split_seed=5))
    c = load_data(DataConfig(name="digits", val_fraction=0.2, split_seed=6))
    assert (
        torch.equal(a.test.x, b.test.x)
        and torch.equal(a.val.x, b.val.x)
        and torch.equal(a.train.y, b.train.y)
    )
    assert not torch.equal(a.test.x, c.test.x) and not torch.equal(a.val.x, c.val.x)
    unique = {
        row.tobytes()
        for row, n in zip(*np.unique(raw_digits.images.reshape(1797, -1), axis=0, return_counts=True))
        if n == 1
    }
    mean, std = a.meta["mean"][0], a.meta["std"][0]
    rows = {
        name: {r.tobytes() for r in pixels(s, mean, std, 1.0).reshape(len(s), -1).astype(np.float64)} & unique
        for name, s in a.splits().items()
    }
    assert rows["train"] and rows["val"] and rows["test"]
    assert (
        not rows["train"] & rows["test"]
        and not rows["val"] & rows["test"]
        and not rows["train"] & rows["val"]
    )


@pytest.fixture(scope="module")
def kjv_text() -> str:
    lines = sources.kjv_jsonl().read_text(encoding="utf-8").splitlines()
    return "\n".join(json.loads(line)["text"] for line in lines if line.strip())


def test_kjv_shapes_vocab_and_shift(kjv_text):
    data = load_data(DataConfig(name="kjv", block_size=64, val_fraction=0.05))
    assert (
        data.spec.task == "language_model" and data.spec.input_shape == (64,) and data.spec.num_classes == 256
    )
    assert data.meta["tokenizer"] == "byte" and data.meta["vocab_size"] == 256
    for split in data.splits().values():
        assert split.x.shape == split.y.shape == (len(split), 64)
        assert split.x.dtype == split.y.dtype == torch.int64
        assert split.x.min() >= 0 and split.x.max() < 256
        assert torch.equal(split.x[:, 1:], split.y[:, :-1])  # targets are the inputs shifted by one
    text = kjv_text.encode()
    assert data.meta["text_bytes"] == len(text) > 4_000_000
    train_rows = np.frombuffer(text[: len(data.train) * 65], dtype=np.uint8).reshape(-1, 65)
    assert np.array_equal(data.train.x.numpy(), train_rows[:, :-1])
    assert np.array_equal(data.train.y.numpy(), train_rows[:, 1:])


def test_kjv_splits_are_contiguous_and_in_order(kjv_text):
    data = load_data(DataConfig(name="kjv", block_size=64, val_fraction=0.05))
    tok = ByteTokenizer()
    text = kjv_text.encode()
    test_start = len(text) - data.meta["test_tokens"]
    val_start = test_start - data.meta["val_tokens"]
    assert data.meta["test_tokens"] == round(0.1 * len(text))  # the last 10%: no overlap with train
    assert data.meta["val_tokens"] == round(0.05 * test_start) and data.meta["train_tokens"] == val_start
    assert tok.decode(data.test.x[0]) == text[test_start : test_start + 64].decode()
    assert tok.decode(data.val.x[0]) == text[val_start : val_start + 64].decode()
    assert tok.decode(data.train.x[0]).startswith(
        "In the beginning God created the heaven and the earth.\nAnd"
    )
    assert len(data.train) == val_start // 65 and len(data.test) == data.meta["test_tokens"] // 65


def test_python_docs_is_the_stdlib_reference_text_in_topic_order():
    from pydoc_data import topics

    data = load_data(DataConfig(name="python-docs", block_size=64, val_fraction=0.05))
    first = sorted(topics.topics)[0]
    assert data.spec.num_classes == 256 and data.meta["source"].endswith("topics.py")
    assert ByteTokenizer().decode(data.train.x[0]) == topics.topics[first].strip().encode()[:64].decode()
    assert data.meta["text_bytes"] > 400_000 and len(data.test) > 0 and len(data.val) > 0


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "In the beginning — naïve café ∑ 日本"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and len(ids) == len(text.encode("utf-8")) > len(text)
    assert tok.decode(ids) == text and tok.decode(torch.from_numpy(ids.astype(np.int64))) == text


def test_listing_says_what_is_available():
    infos = {info.name: info for info in list_datasets()}
    assert set(infos) == {
        "mnist",
        "fashion_mnist",
        "digits",
        "kjv",
        "python-docs",
        "text",
        "folder",
        "table",
        "arrays",
        "shards",
    }
    assert all(isinstance(info, DatasetInfo) and info.summary for info in infos.values())
    assert all(infos[name].available for name in ("mnist", "kjv", "python-docs", "digits"))
    assert infos["fashion_mnist"].available == (not sources.fashion_missing())
    assert "data.path" in infos["folder"].note and "label_column" in infos["table"].note
