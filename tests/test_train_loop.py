"""The training loop on real data (sklearn digits): learning, accumulation, clipping, precision,
early stopping, divergence, checkpoints and exact in-process resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from behemoth.errors import ConfigError
from behemoth.training import BaseHook, JsonlHook, ProgressHook, TensorBoardHook, evaluate, train
from tests.conftest import mlp, quick_train_config


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_learns_digits(digits_bundle):
    model = mlp()
    result = train(model, digits_bundle, quick_train_config(epochs=5), batch_size=32)
    assert result.last_eval["val.acc"] > 0.93
    assert evaluate(model, digits_bundle.test, digits_bundle.spec)["acc"] > 0.93
    assert result.steps == 5 * (1200 // 32) and result.epochs == 5 and result.stop_reason is None


def test_accumulation_equals_large_batch(digits_bundle):
    big, small = mlp(), mlp()
    cfg = dict(epochs=2, optimizer="sgd", lr=0.05, momentum=0.9)
    train(big, digits_bundle, quick_train_config(**cfg), batch_size=64)
    train(small, digits_bundle, quick_train_config(**cfg, accumulate=4), batch_size=16)
    for key, value in big.state_dict().items():
        torch.testing.assert_close(small.state_dict()[key], value, rtol=1e-4, atol=1e-5)
    unscaled = mlp()  # without the 1/accumulate scaling the step would be 4x larger: must differ
    train(unscaled, digits_bundle, quick_train_config(**{**cfg, "lr": 0.2}), batch_size=64)
    assert not torch.allclose(unscaled.state_dict()["0.weight"], small.state_dict()["0.weight"], atol=1e-3)


def test_clip_norm_bounds_the_update(digits_bundle):
    model = mlp()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    train(
        model,
        digits_bundle,
        quick_train_config(epochs=1, max_steps=1, lr=1.0, momentum=0.0, clip_norm=1e-3),
        batch_size=32,
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # plain SGD: update = lr * clipped gradient, whose global norm is exactly clip_norm here
    assert (after - before).norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_clip_value_bounds_each_entry(digits_bundle):
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    train(
        model,
        digits_bundle,
        quick_train_config(epochs=1, max_steps=1, lr=1.0, momentum=0.0, clip_value=1e-4),
        batch_size=32,
    )
    deltas = torch.cat([(p.detach() - b).flatten().abs() for p, b in zip(model.parameters(), before)])
    assert deltas.max().item() == pytest.approx(1e-4, rel=1e-4)


def test_bf16_autocast_learns(digits_bundle):
    model = mlp()
    result = train(model, digits_bundle, quick_train_config(epochs=4, precision="bf16"), batch_size=32)
    assert result.last_eval["val.acc"] > 0.9


def test_fp16_on_cpu_is_refused(digits_bundle):
    with pytest.raises(ConfigError, match="fp16"):
        train(mlp(), digits_bundle, quick_train_config(precision="fp16", device="cpu"), batch_size=32)


@pytest.mark.parametrize("flags", [{"avx2", "fma"}, {"avx2", "avx512f", "avx512_bf16"}])
def test_bf16_on_a_cpu_without_bf16_instructions_says_so(flags, monkeypatch, caplog):
    from behemoth import cpu
    from behemoth.training import precision

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    with caplog.at_level("WARNING", logger="behemoth.training.precision"):
        precision.check_precision("bf16", torch.device("cpu"))
        precision.check_precision("fp32", torch.device("cpu"))
    warned = [r.getMessage() for r in caplog.records if "no bf16 instructions" in r.getMessage()]
    assert len(warned) == (0 if "avx512_bf16" in flags else 1)
    # and the demos, whose recipes train in bf16, train in fp32 there
    from behemoth.pipeline.config import precision_for_this_cpu

    assert precision_for_this_cpu() == ([] if "avx512_bf16" in flags else ["train.precision=fp32"])
    assert all("train.precision = 'bf16'" in line and "'fp32'" in line for line in warned)


def test_label_smoothing_raises_the_loss_floor(digits_bundle):
    plain, smooth = mlp(), mlp()
    a = train(plain, digits_bundle, quick_train_config(epochs=3), batch_size=32)
    b = train(smooth, digits_bundle, quick_train_config(epochs=3, label_smoothing=0.3), batch_size=32)
    # predictions stay good, but a smoothed model is less confident: higher val loss
    assert b.last_eval["val.acc"] > 0.9 and b.last_eval["val.loss"] > a.last_eval["val.loss"] + 0.2


def test_early_stopping_stops_and_says_why(digits_bundle):
    cfg = quick_train_config(epochs=50, lr=1e-9, momentum=0.0)
    cfg.early_stop.patience = 2
    cfg.early_stop.min_delta = 0.01
    result = train(mlp(), digits_bundle, cfg, batch_size=64)
    assert result.epochs == 3  # first eval sets the best, two more without improvement stop it
    assert "early stopping" in result.stop_reason and "val.loss" in result.stop_reason


def test_early_stopping_without_validation_split_is_a_config_error(digits_bundle):
    from dataclasses import replace

    cfg = quick_train_config()
    cfg.early_stop.patience = 2
    with pytest.raises(ConfigError, match="val_fraction"):
        train(mlp(), replace(digits_bundle, val=None), cfg, batch_size=32)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(digits_bundle, tmp_path):
    cfg = quick_train_config(epochs=3, lr=1e12, momentum=0.0)
    cfg.checkpoint.every_steps = 1
    result = train(mlp(), digits_bundle, cfg, batch_size=32, run_dir=tmp_path)
    assert result.diverged and "non-finite loss" in result.stop_reason
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    saved = load_file(str(tmp_path / "checkpoints" / latest / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert int(latest.split("-")[1]) == result.steps


def test_checkpoints_keep_last_n(digits_bundle, tmp_path):
    cfg = quick_train_config(epochs=2)
    cfg.checkpoint.every_steps = 5
    cfg.checkpoint.keep_last = 3
    train(mlp(), digits_bundle, cfg, batch_size=64, run_dir=tmp_path)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert len(kept) == 3 and (tmp_path / "checkpoints" / "latest").read_text() == kept[-1]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


class Stopper(BaseHook):
    """Simulates an interruption: raises after `at` optimizer steps."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, ctx, metrics):
        if ctx.step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "options",
    [
        dict(optimizer="adam", lr=3e-3, schedule="cosine", warmup=5),
        dict(optimizer="sgd", lr=0.1, momentum=0.9, schedule="onecycle", accumulate=2),
    ],
    ids=["adam-cosine", "sgd-onecycle-accumulate"],
)
def test_resume_mid_epoch_is_bitwise_exact(digits_bundle, tmp_path, options):
    model_with_dropout = lambda: torch.nn.Sequential(  # noqa: E731 dropout makes RNG state matter
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 10)
    )
    cfg = quick_train_config(epochs=3, **options)
    cfg.checkpoint.every_steps = 7
    torch.manual_seed(0)
    straight = model_with_dropout()
    train(straight, digits_bundle, cfg, batch_size=32, run_dir=tmp_path / "a")

    torch.manual_seed(0)
    interrupted = model_with_dropout()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, digits_bundle, cfg, batch_size=32, run_dir=tmp_path / "b", hooks=[Stopper(45)])
    latest = tmp_path / "b" / "checkpoints" / (tmp_path / "b" / "checkpoints" / "latest").read_text()
    assert latest.name == "step-00000042"  # mid-epoch: not a multiple of the steps per epoch
    torch.manual_seed(123)  # a fresh process would have other RNG state: resume must restore it
    resumed = model_with_dropout()
    train(resumed, digits_bundle, cfg, batch_size=32, run_dir=tmp_path / "b", resume_from=latest)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_logging_hooks_write_jsonl_tensorboard_and_plain_lines(digits_bundle, tmp_path):
    import io

    stream = io.StringIO()
    hooks = [
        ProgressHook(stream=stream),
        JsonlHook(tmp_path / "metrics.jsonl"),
        TensorBoardHook(tmp_path / "tb"),
    ]
    train(mlp(), digits_bundle, quick_train_config(epochs=2, log_every=10), batch_size=32, hooks=hooks)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    eval_records = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_records][:3] == [10, 20, 30]
    assert all({"train.loss", "train.acc", "lr", "samples_per_second"} <= r.keys() for r in train_records)
    assert len(eval_records) == 2 and eval_records[-1]["val.acc"] > 0.8
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    text = stream.getvalue()
    assert "step 10/74 loss" in text and "samples/s" in text and "val.acc" in text


def test_detailed_metrics_match_sklearn(digits_bundle):
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

    model = mlp()
    train(model, digits_bundle, quick_train_config(epochs=1, lr=0.02, momentum=0.0), batch_size=64)
    got = evaluate(model, digits_bundle.test, digits_bundle.spec, batch_size=100, detailed=True)
    with torch.no_grad():
        pred = model(digits_bundle.test.x).argmax(-1).numpy()
    true = digits_bundle.test.y.numpy()
    assert got["f1_macro"] == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-5)
    assert got["precision_macro"] == pytest.approx(
        precision_score(true, pred, average="macro", zero_division=0), abs=1e-5
    )
    assert got["recall_per_class"] == pytest.approx(list(recall_score(true, pred, average=None)), abs=1e-5)
    assert got["confusion_matrix"] == confusion_matrix(true, pred).tolist()


def test_torch_compile_option_trains_the_same_model(digits_bundle):
    """train.compile = true runs the step through torch.compile; the weights it trains are the model's own."""
    eager, compiled = mlp(), mlp()
    train(eager, digits_bundle, quick_train_config(epochs=1, max_steps=10, momentum=0.0), batch_size=64)
    train(
        compiled,
        digits_bundle,
        quick_train_config(epochs=1, max_steps=10, momentum=0.0, compile=True),
        batch_size=64,
    )
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(compiled.state_dict()["0.weight"], mlp().state_dict()["0.weight"])


class LrRecorder(BaseHook):
    def __init__(self) -> None:
        self.by_epoch: dict[int, set[float]] = {}

    def on_step_end(self, ctx, metrics):
        self.by_epoch.setdefault(ctx.epoch, set()).add(round(metrics["lr"], 12))


def test_schedule_stepped_per_epoch_holds_lr_within_an_epoch(digits_bundle):
    recorder = LrRecorder()
    cfg = quick_train_config(epochs=3, lr=0.1, schedule="step", schedule_unit="epoch", step_size=1, gamma=0.5)
    train(mlp(), digits_bundle, cfg, batch_size=64, hooks=[recorder])
    # the lr logged after each step is the one the next step uses; it changes only when an epoch ends
    assert recorder.by_epoch == {0: {0.1}, 1: {0.05}, 2: {0.025}}


def test_schedule_stepped_per_step_changes_every_step(digits_bundle):
    recorder = LrRecorder()
    train(
        mlp(), digits_bundle, quick_train_config(epochs=1, schedule="cosine"), batch_size=64, hooks=[recorder]
    )
    assert len(recorder.by_epoch[0]) == 1200 // 64


class EveryOtherRow:
    """A sampler visiting only the even rows: the loop must take its epoch size and order."""

    def __init__(self, rows: int) -> None:
        self.epoch_size = rows // 2

    def order(self, seed: int, epoch: int) -> torch.Tensor:
        return torch.arange(0, 2 * self.epoch_size, 2)


def test_feed_sampler_and_transform_are_what_the_loop_trains_on(digits_bundle):
    from behemoth.training.feed import TensorFeed

    seen: list[torch.Tensor] = []

    def flip_sign(x, y, generator):
        seen.append(torch.randint(0, 10**6, (1,), generator=generator))
        return -x, y

    cfg = quick_train_config(epochs=1)
    feed = TensorFeed(
        digits_bundle.train,
        50,
        1,
        cfg.seed,
        torch.device("cpu"),
        sampler=EveryOtherRow(1200),
        transform=flip_sign,
    )
    model = mlp()
    result = train(model, digits_bundle, cfg, batch_size=50, feed=feed)
    assert result.steps == 600 // 50 and len(seen) == 12
    # the same steps by hand: even rows, in order, sign-flipped
    manual = mlp()
    optimizer = torch.optim.SGD(manual.parameters(), lr=0.1, momentum=0.9)
    for step in range(12):
        rows = torch.arange(100 * step, 100 * (step + 1), 2)
        loss = torch.nn.functional.cross_entropy(
            manual(-digits_bundle.train.x[rows]), digits_bundle.train.y[rows]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in manual.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    # transform generators are a function of (seed, epoch, step): a second run draws the same numbers
    first = [int(s) for s in seen]
    seen.clear()
    train(
        mlp(),
        digits_bundle,
        cfg,
        batch_size=50,
        feed=TensorFeed(
            digits_bundle.train,
            50,
            1,
            cfg.seed,
            torch.device("cpu"),
            sampler=EveryOtherRow(1200),
            transform=flip_sign,
        ),
    )
    assert [int(s) for s in seen] == first and len(set(first)) > 1


def test_loss_fn_replaces_the_task_loss_and_soft_targets_train(digits_bundle):
    calls = []

    def soft_target_loss(logits, y, x):
        calls.append(x.shape)
        soft = torch.nn.functional.one_hot(y, 10).float() * 0.9 + 0.01  # rows sum to 1
        return torch.nn.functional.cross_entropy(logits, soft)

    model = mlp()
    result = train(
        model, digits_bundle, quick_train_config(epochs=3), batch_size=32, loss_fn=soft_target_loss
    )
    assert len(calls) == result.steps and calls[0] == (32, 64)
    assert result.last_eval["val.acc"] > 0.9
