"""Learning-rate schedules: the lr at each step against the closed-form curve."""

import math

import pytest
import torch

from behemoth.config import TrainConfig
from behemoth.errors import ConfigError
from behemoth.training import build_optimizer, build_scheduler


def lrs(cfg: TrainConfig, total: int, steps: int | None = None) -> list[float]:
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, total)
    out = []
    for _ in range(steps or total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant():
    assert lrs(TrainConfig(lr=0.3), 5) == pytest.approx([0.3] * 5)


def test_step_decay_is_a_staircase():
    got = lrs(TrainConfig(lr=1.0, schedule="step", step_size=3, gamma=0.5), 9)
    assert got == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25])


def test_exponential_decay_is_smooth_and_hits_gamma_every_step_size():
    got = lrs(TrainConfig(lr=1.0, schedule="exponential", step_size=2, gamma=0.25), 5)
    assert got == pytest.approx([0.25 ** (t / 2) for t in range(5)])


def test_cosine_from_lr_to_min_lr():
    total = 10
    got = lrs(TrainConfig(lr=1.0, schedule="cosine", min_lr=0.1), total)
    want = [0.1 + 0.9 * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    assert got == pytest.approx(want, rel=1e-6)


def test_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, schedule="cosine", warmup=4, min_lr=0.0)
    got = lrs(cfg, 14)
    assert got[:5] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0])  # linear ramp to lr
    assert got[4] == pytest.approx(1.0) and got[-1] < 0.05  # then cosine over the remaining 10
    assert all(a >= b for a, b in zip(got[4:], got[5:]))


def test_onecycle_rises_to_lr_then_anneals():
    cfg = TrainConfig(
        lr=1.0,
        schedule="onecycle",
        pct_start=0.3,
        div_factor=10,
        final_div_factor=100,
        optimizer="sgd",
        momentum=0.9,
    )
    got = lrs(cfg, 100)
    peak = max(range(100), key=lambda i: got[i])
    assert got[0] == pytest.approx(0.1)
    assert 27 <= peak <= 31 and got[peak] == pytest.approx(1.0, rel=1e-3)
    assert got[-1] < 0.01


def test_onecycle_refuses_extra_warmup():
    with pytest.raises(ConfigError, match="train.warmup"):
        lrs(TrainConfig(schedule="onecycle", warmup=3), 10)


def test_warmup_longer_than_run_is_an_error():
    with pytest.raises(ConfigError, match="train.warmup = 20"):
        lrs(TrainConfig(schedule="cosine", warmup=20), 10)
