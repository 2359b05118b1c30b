"""A shard directory as a dataset (data.name = "shards", data.path = the directory).

Validation and test splits are loaded into memory (evaluation reads them whole). The training split is
streamed by default (`data.shards.stream`): the bundle then holds a `StreamedSplit`, which knows its
length and its shards, and the training feed (behemoth.training.feeds) reads it with a ShardDataset.
"""

from pathlib import Path

import torch

from behemoth.data.bundle import DataBundle
from behemoth.data.checks import require_path
from behemoth.data.shards.format import read_index
from behemoth.data.shards.reader import ShardSplit
from behemoth.errors import ConfigError, DataError
from behemoth.spec import DataSpec


class StreamedSplit:
    """Stands in for the training TensorSplit when it is streamed: len() and the labels work, x does not."""

    def __init__(self, shards: ShardSplit) -> None:
        self.shards = shards
        self._labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def x(self) -> torch.Tensor:
        raise DataError(
            f"the training inputs of {self.shards.root} are streamed from shards; "
            "set data.shards.stream = false to load them into memory"
        )

    @property
    def y(self) -> torch.Tensor:
        """The class labels (N,), read from the small labels file (for statistics such as class counts).

        Splits without one (language-model token targets, as large as x) give a tensor on the "meta"
        device: its shape and dtype are right (what split statistics read), and it holds no data.
        """
        if self._labels is None:
            info = self.shards.info
            if info.labels is not None:
                self._labels = self.shards.labels()
            else:
                dtype = torch.float32 if info.y_dtype.startswith("float") else torch.int64
                self._labels = torch.empty((info.count, *info.y_shape), dtype=dtype, device="meta")
        return self._labels


def load_shards(cfg) -> DataBundle:
    """The DataBundle of the shard directory cfg.path (a DataConfig), every shard checked as it is read."""
    root = require_path(cfg.path, "shards", "a directory written by `behemoth data pack`")
    index = read_index(Path(root))
    if "train" not in index.splits:
        raise DataError(f"{root}: the index has no train split (has: {', '.join(index.splits) or 'none'})")
    splits = {name: ShardSplit(root, name, info) for name, info in index.splits.items()}
    if cfg.shards.stream:
        if cfg.train_limit is not None:
            raise ConfigError(
                f"data.train_limit = {cfg.train_limit}: not available while streaming shards "
                "(set data.shards.stream = false, or pack fewer samples)"
            )
        train = StreamedSplit(splits["train"])
    else:
        train = splits["train"].load().take(cfg.train_limit or len(splits["train"]))
    val = splits["val"].load() if "val" in splits and len(splits["val"]) else None
    test = splits["test"].load() if "test" in splits else None
    if test is not None and cfg.test_limit:
        test = test.take(cfg.test_limit)
    spec = DataSpec(index.spec["task"], tuple(index.spec["input_shape"]), index.spec["num_classes"])
    meta = dict(index.meta, shards=str(root), packed_from=index.dataset)
    return DataBundle(index.dataset, spec, train, val, test, list(index.class_names), meta)
