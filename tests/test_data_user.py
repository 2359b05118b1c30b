"""The user's own data (text, image folder, table, arrays), built as small real files from real datasets."""

import numpy as np
import pytest
import torch

from behemoth.config import DataConfig
from behemoth.data import load_data, sources
from behemoth.data.text import ByteTokenizer


@pytest.fixture(scope="module")
def mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    """The first 600 MNIST training images (uint8) and labels, straight from the package's zarr zip."""
    import zarr

    store = zarr.storage.ZipStore(sources.mnist_zip(), mode="r")
    group = zarr.open_group(store, mode="r")
    return group["train_images"][:600], group["train_labels"][:600].astype(np.int64)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return load_digits()


def sorted_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


def undo(split, meta) -> np.ndarray:
    """Pixels/features back in the source's units, from a normalised split."""
    shape = (1, -1, 1, 1) if split.x.ndim == 4 else (1, -1)
    mean, std = torch.tensor(meta["mean"]).view(shape), torch.tensor(meta["std"]).view(shape)
    return torch.round((split.x * std + mean) * meta["input_scale"]).to(torch.int64).numpy()


# text


def test_text_folder_is_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second file, naïve café " * 20, encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file " * 40, encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored: not a .txt file")
    data = load_data(DataConfig(name="text", path=str(tmp_path), block_size=16, val_fraction=0.1))
    text = ("first file " * 40 + "\n" + "second file, naïve café " * 20).encode()
    assert data.name == "text" and data.spec.input_shape == (16,) and data.spec.num_classes == 256
    assert data.meta["text_bytes"] == len(text) and data.meta["tokenizer"] == "byte"
    tok = ByteTokenizer()
    assert tok.decode(data.train.x[0]) == "first file first"
    assert torch.equal(data.train.x[:, 1:], data.train.y[:, :-1])
    test_start = len(text) - data.meta["test_tokens"]
    assert bytes(data.test.x[0].tolist()) == text[test_start : test_start + 16]
    assert len(data.val) >= 1 and data.val.x.dtype == torch.int64


def test_single_text_file_and_limits(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("".join(f"line {i}\n" for i in range(400)))
    data = load_data(
        DataConfig(name="text", path=str(path), block_size=8, val_fraction=0.0, train_limit=5, test_limit=3)
    )
    assert data.val is None and len(data.train) == 5 and len(data.test) == 3
    assert ByteTokenizer().decode(data.train.x[0]) == "line 0\nl"


# image folder


def write_pngs(
    root, images: np.ndarray, labels: np.ndarray, classes=(0, 1, 2), per_class=25, mode="L"
) -> np.ndarray:
    """Save `per_class` images of each class as PNG under root/digit_<c>/; return what was written."""
    from PIL import Image

    written = []
    for c in classes:
        folder = root / f"digit_{c}"
        folder.mkdir(parents=True)
        for i, image in enumerate(images[labels == c][:per_class]):
            picture = Image.fromarray(image)  # 2-D uint8: mode L
            (picture.convert("RGB") if mode == "RGB" else picture).save(folder / f"{i:03d}.png")
            written.append(image)
    return np.stack(written)


def test_folder_of_grayscale_pngs(tmp_path, mnist_sample):
    images, labels = mnist_sample
    written = write_pngs(tmp_path, images, labels)
    (tmp_path / "digit_0" / "README.txt").write_text("not an image: skipped")
    data = load_data(DataConfig(name="folder", path=str(tmp_path), val_fraction=0.2, split_seed=3))
    assert data.class_names == ["digit_0", "digit_1", "digit_2"] and data.spec.num_classes == 3
    assert data.spec.input_shape == (1, 28, 28) and data.train.x.dtype == torch.float32
    assert len(data.test) == 15 and torch.bincount(data.test.y).tolist() == [5, 5, 5]  # 20% of each class
    assert len(data.train) + len(data.val) == 60 and data.train.y.dtype == torch.int64
    assert abs(data.train.x.mean().item()) < 1e-4 and abs(data.train.x.std(correction=0).item() - 1) < 1e-4
    everything = np.concatenate([undo(s, data.meta) for s in data.splits().values()])[:, 0]
    assert np.array_equal(sorted_rows(everything), sorted_rows(written))  # the very pixels, each image once
    again = load_data(DataConfig(name="folder", path=str(tmp_path), val_fraction=0.2, split_seed=3))
    other = load_data(DataConfig(name="folder", path=str(tmp_path), val_fraction=0.2, split_seed=4))
    assert torch.equal(again.test.x, data.test.x) and torch.equal(again.val.x, data.val.x)
    assert not torch.equal(other.test.x, data.test.x)


def test_folder_of_colour_pngs_resized(tmp_path, mnist_sample):
    from PIL import Image

    images, labels = mnist_sample
    write_pngs(tmp_path, images, labels, classes=(3, 4), per_class=10, mode="RGB")
    Image.fromarray(images[0]).resize((40, 30)).convert("RGB").save(tmp_path / "digit_3" / "odd_size.png")
    data = load_data(DataConfig(name="folder", path=str(tmp_path), image_size=(14, 12), val_fraction=0.0))
    assert data.spec.input_shape == (3, 14, 12) and len(data.train) + len(data.test) == 21
    assert len(data.meta["mean"]) == 3 and data.meta["image_mode"] == "RGB"
    per_channel = data.train.x.mean(dim=(0, 2, 3))
    assert (per_channel.abs() < 1e-4).all()


# table


def digits_frame(digits, rows: int = 600):
    import pandas as pd

    frame = pd.DataFrame(digits.data[:rows], columns=[f"px{i}" for i in range(64)])
    frame["digit"] = [f"d{t}" for t in digits.target[:rows]]
    return frame


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_table_from_sklearn_digits(tmp_path, digits, suffix):
    frame = digits_frame(digits)
    path = tmp_path / f"digits.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    data = load_data(DataConfig(name="table", path=str(path), label_column="digit", val_fraction=0.1))
    assert data.spec.input_shape == (64,) and data.spec.num_classes == 10
    assert data.class_names == [f"d{i}" for i in range(10)] and data.meta["feature_names"][0] == "px0"
    assert (
        len(data.test) == pytest.approx(120, abs=5)
        and len(data.train) + len(data.val) + len(data.test) == 600
    )
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert torch.isfinite(data.train.x).all()  # constant (all-zero) pixel columns become 0, not NaN
    varying = torch.tensor(data.meta["std"]) != 1.0
    assert (data.train.x.mean(0).abs() < 1e-4).all()
    assert ((data.train.x.std(0, correction=0)[varying] - 1).abs() < 1e-3).all()
    rows = np.concatenate([undo(s, data.meta) for s in data.splits().values()])
    labels = torch.cat([s.y for s in data.splits().values()]).numpy()
    expected = digits.data[:600].astype(np.int64)
    assert np.array_equal(
        sorted_rows(np.column_stack([rows, labels])),
        sorted_rows(np.column_stack([expected, digits.target[:600]])),
    )  # label mapping is right


def test_table_numeric_labels_sort_numerically(tmp_path, digits):
    frame = digits_frame(digits, 300)
    frame["digit"] = digits.target[:300] * 5  # 0, 5, ..., 45: numeric, so 10 < 5 must not happen
    frame.to_csv(tmp_path / "t.csv", index=False)
    data = load_data(
        DataConfig(name="table", path=str(tmp_path / "t.csv"), label_column="digit", val_fraction=0.0)
    )
    assert data.class_names == [str(5 * i) for i in range(10)]


# arrays


def test_arrays_npz_with_official_test(tmp_path, mnist_sample):
    images, labels = mnist_sample
    np.savez(
        tmp_path / "d.npz",
        x=images[:500].astype(np.float32) / 255,
        y=labels[:500],
        x_test=images[500:].astype(np.float32) / 255,
        y_test=labels[500:],
    )
    data = load_data(DataConfig(name="arrays", path=str(tmp_path / "d.npz"), val_fraction=0.1))
    assert data.spec.input_shape == (1, 28, 28) and data.spec.num_classes == 10
    assert len(data.train) == 450 and len(data.val) == 50 and len(data.test) == 100
    assert torch.equal(data.test.y, torch.from_numpy(labels[500:]))  # the given test split, in order
    assert data.meta["test_split"] == "official"
    assert abs(data.train.x.mean().item()) < 1e-4 and abs(data.train.x.std(correction=0).item() - 1) < 1e-4


def test_arrays_folder_of_npy_tabular(tmp_path, digits):
    np.save(tmp_path / "x.npy", digits.data)
    np.save(tmp_path / "y.npy", digits.target.astype(np.int32))
    data = load_data(DataConfig(name="arrays", path=str(tmp_path), val_fraction=0.0))
    assert data.spec.input_shape == (64,) and data.val is None
    assert len(data.test) == 359 and len(data.train) == 1797 - 359  # 20% held out, stratified
    assert data.meta["layout"] == "table" and len(data.meta["mean"]) == 64


def test_arrays_uint8_images_and_class_names(tmp_path, mnist_sample):
    images, labels = mnist_sample
    np.savez(
        tmp_path / "u8.npz", x=images[:, None], y=labels, class_names=np.array([f"n{i}" for i in range(10)])
    )
    data = load_data(DataConfig(name="arrays", path=str(tmp_path / "u8.npz"), val_fraction=0.0))
    assert data.spec.input_shape == (1, 28, 28) and data.class_names[3] == "n3"
    assert data.meta["input_scale"] == 255.0 and 0 < data.meta["mean"][0] < 1
