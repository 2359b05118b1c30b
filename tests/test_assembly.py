"""One assembly path: every entry point that trains sees the batches [data] describes.

Before it, tune trials, compress retraining, QAT and distillation built their own feed, so data.augment and
data.sampling were silently ignored there and streamed shards failed. Each case below runs the real entry
point on sklearn's digits and watches the augmentation (or the shard stream) at work.
"""

import pytest
import torch

import behemoth
from behemoth.data.augment.compose import Augment
from behemoth.federated.local import local_train
from behemoth.training.assembly import assemble
from behemoth.training.feeds import ShardFeed

SHORT = ["train.epochs=1", "train.max_steps=3", "train.early_stop.patience=0"]
LIMIT = "data.train_limit=256"  # shards are packed at that size: a stream cannot be limited
AUGMENT = ["data.augment.rotate.p=1.0", "data.augment.rotate.degrees=20"]


@pytest.fixture
def calls(monkeypatch):
    """Counts batches that went through data.augment and through a shard stream."""
    seen = {"augmented": 0, "streamed": 0}
    augment, stream = Augment.__call__, ShardFeed.epoch

    def counted_augment(self, x, y, generator):
        seen["augmented"] += 1
        return augment(self, x, y, generator)

    def counted_stream(self, epoch, start_step=0):
        for item in stream(self, epoch, start_step):
            seen["streamed"] += 1
            yield item

    monkeypatch.setattr(Augment, "__call__", counted_augment)
    monkeypatch.setattr(ShardFeed, "epoch", counted_stream)
    return seen


def config(tmp_path, *extra, name="run"):
    limit = [] if "data.name=shards" in extra else [LIMIT]
    return behemoth.load_config(
        "digits", [f"runs_dir={str(tmp_path)!r}", f"name={name}", *SHORT, *limit, *extra]
    )


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits-shards") / "shards"
    behemoth.pipeline.data.pack("digits", out, ["data.val_fraction=0.15", LIMIT])
    return ["data.name=shards", f"data.path={str(out)!r}"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    runs = tmp_path_factory.mktemp("teacher")
    return behemoth.train(config(runs, name="teacher"), progress=False)["run"]


def entry_points(tmp_path, teacher):
    """name -> a function that trains through that entry point with the given extra overrides."""

    def train(extra):
        behemoth.train(config(tmp_path, *extra), progress=False)

    def tune(extra):
        space = [
            "tune.space.train.lr={log_uniform = [1e-3, 1e-2]}",
            "tune.objective=val.loss",
            "tune.pruner=none",
        ]
        limit = [] if "data.name=shards" in extra else [LIMIT]
        behemoth.tune(
            "digits",
            [f"runs_dir={str(tmp_path)!r}", "name=tune", *SHORT, *limit, *space, *extra],
            trials=1,
            log=lambda line: None,
            announce=lambda line: None,
        )

    def compress_retrain(extra):
        run = behemoth.train(config(tmp_path, *extra, name="c"), progress=False)["run"]
        behemoth.compress(run, "prune=0.5,retrain_epochs=1,quant=none,code=none", extra, latency=False)

    def qat(extra):
        run = behemoth.train(config(tmp_path, *extra, name="q"), progress=False)["run"]
        behemoth.compress(run, "quant=qat,finetune_epochs=1,code=none", extra, latency=False)

    def distill(extra):
        behemoth.distill(
            config(tmp_path, *extra, f"compress.teacher={teacher!r}", name="student"), progress=False
        )

    return {
        "train": train,
        "tune": tune,
        "compress retraining": compress_retrain,
        "qat": qat,
        "distill": distill,
    }


ENTRY_POINTS = ["train", "tune", "compress retraining", "qat", "distill"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_trains_on_augmented_batches(entry, tmp_path, teacher, calls):
    entry_points(tmp_path, teacher)[entry](AUGMENT)
    assert calls["augmented"] >= 3  # every training step of the entry point's own training


@pytest.mark.parametrize("entry", ["train", "tune", "compress retraining", "distill"])
def test_every_entry_point_streams_shards(entry, tmp_path, teacher, shards, calls):
    entry_points(tmp_path, teacher)[entry](shards)
    assert calls["streamed"] >= 3


def test_a_federated_client_trains_on_augmented_batches(tmp_path, calls):
    cfg = config(tmp_path, *AUGMENT)
    parts = assemble(cfg)
    split = parts.data.train.take(64)
    result = local_train(parts.model, split, parts.data.spec, cfg, seed=1)
    assert result.steps >= 1 and calls["augmented"] == result.steps * cfg.train.accumulate


def test_client_dp_refuses_mixing_augmentation(tmp_path):
    cfg = config(tmp_path, "data.augment.mixup.p=0.5")
    parts = assemble(cfg)
    with pytest.raises(behemoth.errors.ConfigError, match="data.augment.mixup: not with federate.dp.mode"):
        local_train(
            parts.model, parts.data.train.take(64), parts.data.spec, cfg, seed=1, noise_multiplier=1.0
        )


def test_assembly_is_reproducible_by_seed(tmp_path):
    first, second = assemble(config(tmp_path, *AUGMENT)), assemble(config(tmp_path, *AUGMENT))
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    (_, batch_a), (_, batch_b) = next(first.feed.epoch(0)), next(second.feed.epoch(0))
    assert torch.equal(batch_a[0].x, batch_b[0].x)
