"""Each configured optimizer's first steps against its textbook update, written out here by hand,
so a wrong mapping from config to torch.optim (or a wrong default) cannot pass."""

import math

import pytest
import torch

from behemoth.config import TrainConfig
from behemoth.config.optimizers import OPTIMIZERS, OptimizerEntry, same
from behemoth.distributed.plan import example_batch, measure_model, optimizer_bytes
from behemoth.errors import ConfigError
from behemoth.training import build_optimizer, parameter_groups
from behemoth.training.optim import optimizer_for, optimizer_state_bytes

W0 = [0.5, -1.0, 2.0]
C = torch.tensor([0.3, -0.2, 0.1])


def grad_at(w: list[float]) -> list[float]:
    # loss = sum(c*w) + 0.5 * sum(w^2)  ->  grad = c + w
    return [c + wi for c, wi in zip(C.tolist(), w)]


def run_torch(cfg: TrainConfig, steps: int = 3) -> list[float]:
    w = torch.nn.Parameter(torch.tensor(W0))
    opt = build_optimizer([w], cfg)
    for _ in range(steps):
        opt.zero_grad()
        ((C * w).sum() + 0.5 * (w * w).sum()).backward()
        opt.step()
    return w.detach().tolist()


def sgd_ref(cfg: TrainConfig, steps: int) -> list[float]:
    w, buf = list(W0), None
    for _ in range(steps):
        g = [gi + cfg.weight_decay * wi for gi, wi in zip(grad_at(w), w)]
        if cfg.momentum:
            buf = g if buf is None else [cfg.momentum * b + (1 - cfg.dampening) * gi for b, gi in zip(buf, g)]
            g = [gi + cfg.momentum * b for gi, b in zip(g, buf)] if cfg.nesterov else buf
        w = [wi - cfg.lr * gi for wi, gi in zip(w, g)]
    return w


def adagrad_ref(cfg: TrainConfig, steps: int) -> list[float]:
    w, acc = list(W0), [0.0] * 3
    for _ in range(steps):
        g = [gi + cfg.weight_decay * wi for gi, wi in zip(grad_at(w), w)]
        acc = [a + gi * gi for a, gi in zip(acc, g)]
        w = [wi - cfg.lr * gi / (math.sqrt(a) + cfg.eps) for wi, gi, a in zip(w, g, acc)]
    return w


def rmsprop_ref(cfg: TrainConfig, steps: int) -> list[float]:
    w, sq, avg, buf = list(W0), [0.0] * 3, [0.0] * 3, [0.0] * 3
    for _ in range(steps):
        g = [gi + cfg.weight_decay * wi for gi, wi in zip(grad_at(w), w)]
        sq = [cfg.alpha * s + (1 - cfg.alpha) * gi * gi for s, gi in zip(sq, g)]
        if cfg.centered:
            avg = [cfg.alpha * a + (1 - cfg.alpha) * gi for a, gi in zip(avg, g)]
            denom = [math.sqrt(s - a * a) + cfg.eps for s, a in zip(sq, avg)]
        else:
            denom = [math.sqrt(s) + cfg.eps for s in sq]
        if cfg.momentum:
            buf = [cfg.momentum * b + gi / d for b, gi, d in zip(buf, g, denom)]
            w = [wi - cfg.lr * b for wi, b in zip(w, buf)]
        else:
            w = [wi - cfg.lr * gi / d for wi, gi, d in zip(w, g, denom)]
    return w


def adam_ref(cfg: TrainConfig, steps: int, decoupled: bool) -> list[float]:
    b1, b2 = cfg.betas
    w, m, v = list(W0), [0.0] * 3, [0.0] * 3
    for t in range(1, steps + 1):
        g = grad_at(w)
        if decoupled:  # AdamW: shrink the weights directly, outside the adaptive update
            w = [wi * (1 - cfg.lr * cfg.weight_decay) for wi in w]
        else:  # Adam: L2 penalty added to the gradient
            g = [gi + cfg.weight_decay * wi for gi, wi in zip(g, w)]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        m_hat = [mi / (1 - b1**t) for mi in m]  # bias correction
        v_hat = [vi / (1 - b2**t) for vi in v]
        w = [wi - cfg.lr * mh / (math.sqrt(vh) + cfg.eps) for wi, mh, vh in zip(w, m_hat, v_hat)]
    return w


def adadelta_ref(cfg: TrainConfig, steps: int) -> list[float]:
    w, sq, acc_delta = list(W0), [0.0] * 3, [0.0] * 3
    for _ in range(steps):
        g = [gi + cfg.weight_decay * wi for gi, wi in zip(grad_at(w), w)]
        sq = [cfg.rho * s + (1 - cfg.rho) * gi * gi for s, gi in zip(sq, g)]
        delta = [math.sqrt(a + cfg.eps) / math.sqrt(s + cfg.eps) * gi for a, s, gi in zip(acc_delta, sq, g)]
        acc_delta = [cfg.rho * a + (1 - cfg.rho) * d * d for a, d in zip(acc_delta, delta)]
        w = [wi - cfg.lr * d for wi, d in zip(w, delta)]
    return w


CASES = [
    ("sgd plain", dict(optimizer="sgd", lr=0.1), sgd_ref),
    ("sgd momentum", dict(optimizer="sgd", lr=0.1, momentum=0.9), sgd_ref),
    ("sgd dampening", dict(optimizer="sgd", lr=0.1, momentum=0.8, dampening=0.3), sgd_ref),
    ("sgd nesterov", dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), sgd_ref),
    ("adagrad", dict(optimizer="adagrad", lr=0.5, eps=1e-10, weight_decay=0.01), adagrad_ref),
    ("rmsprop", dict(optimizer="rmsprop", lr=0.01, alpha=0.9), rmsprop_ref),
    (
        "rmsprop centered momentum",
        dict(optimizer="rmsprop", lr=0.01, alpha=0.9, centered=True, momentum=0.5),
        rmsprop_ref,
    ),
    (
        "adam",
        dict(optimizer="adam", lr=0.05, betas=(0.8, 0.95), weight_decay=0.1),
        lambda c, s: adam_ref(c, s, False),
    ),
    (
        "adamw",
        dict(optimizer="adamw", lr=0.05, betas=(0.8, 0.95), weight_decay=0.1),
        lambda c, s: adam_ref(c, s, True),
    ),
    ("adadelta", dict(optimizer="adadelta", lr=1.0, rho=0.9, eps=1e-6), adadelta_ref),
]


@pytest.mark.parametrize("label,options,reference", CASES, ids=[c[0] for c in CASES])
def test_first_steps_match_textbook_update(label, options, reference):
    cfg = TrainConfig(**options)
    got = run_torch(cfg, steps=3)
    want = reference(cfg, 3)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6), label
    assert got != pytest.approx(W0), "the optimizer must move the weights"


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match="train.nesterov"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(optimizer="sgd", nesterov=True))


def test_no_decay_for_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    groups = parameter_groups(model, weight_decay=0.1, decay_norm_and_bias=False)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(model[0].weight), id(model[2].weight)}
    assert no_decay == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    everything = parameter_groups(model, weight_decay=0.1, decay_norm_and_bias=True)
    assert len(everything) == 1 and len(everything[0]["params"]) == 6


def test_no_decay_group_really_is_not_decayed():
    """With zero gradients, only decayed weights shrink under AdamW."""
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    cfg = TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5)
    opt = build_optimizer(parameter_groups(model, cfg.weight_decay, False), cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model.weight, torch.full_like(model.weight, 1 - 0.1 * 0.5))
    assert torch.equal(model.bias, torch.ones_like(model.bias))


def test_tied_weights_are_optimised_once():
    embedding = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight  # weight tying, as in GPT
    model = torch.nn.ModuleDict({"emb": embedding, "head": head})
    groups = parameter_groups(model, weight_decay=0.1, decay_norm_and_bias=False)
    assert sum(len(g["params"]) for g in groups) == 1


# ---- the registry: every entry builds, steps and has a memory plan; a new entry needs nothing else ----

# state that does not grow with the parameters: step counters, torchao's two 256-entry fp32 code maps
PER_OPTIMIZER_BYTES = 64 + 2 * 256 * 4


def tiny_model() -> torch.nn.Module:
    """One 8192-value weight: above torchao's 4096-value floor, so 8-bit entries really quantize."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(128, 64, bias=False))


def step_and_plan(name: str, **options) -> tuple[torch.nn.Module, int, int]:
    """One step of `name` on the tiny model: (model, state bytes it holds, state bytes the plan expects)."""
    model = tiny_model()
    cfg = TrainConfig(optimizer=name, lr=0.01, **options)
    opt = optimizer_for(model, cfg)
    example = example_batch("classification", (128,))
    x, y = example(4)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    facts = measure_model(model, example, torch.nn.functional.cross_entropy)
    planned = optimizer_bytes(facts, name, momentum=cfg.momentum, centered=cfg.centered)
    return model, optimizer_state_bytes(opt), planned


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "centered": True}], ids=["plain", "momentum"])
def test_every_registry_entry_builds_steps_and_has_a_plan(name, options):
    """The plan's slots match the state the optimizer really keeps (up to a constant per optimizer), so a
    wrong slot count in an entry fails here (one slot of the tiny model: 32 KiB, 8 KiB in 8-bit)."""
    weight_before = tiny_model()[0].weight.detach().clone()
    model, held, planned = step_and_plan(name, **options)
    assert not torch.equal(model[0].weight, weight_before), f"{name} must move the weights"
    assert 0 <= held - planned <= PER_OPTIMIZER_BYTES, f"{name}: plan {planned} B, holds {held} B"


@pytest.mark.parametrize("name", [n for n, e in OPTIMIZERS.items() if not e.is_builder])
def test_fused_kernel_refused_exactly_where_the_registry_says(name):
    cfg = TrainConfig(optimizer=name, optimizer_impl="fused")
    params = [torch.nn.Parameter(torch.zeros(2))]
    if OPTIMIZERS[name].fused:
        assert build_optimizer(params, cfg).defaults["fused"] is True
    else:
        with pytest.raises(ConfigError, match=f"'fused': torch.optim has no fused {name} "):
            build_optimizer(params, cfg)


def test_one_registry_entry_is_enough_to_add_an_optimizer(monkeypatch):
    """Config validation, building and the memory plan all read the registry: nothing else to edit."""
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="nadam")
    nadam = OptimizerEntry("torch.optim.NAdam", same("lr", "betas", "eps", "weight_decay"), slots=2)
    monkeypatch.setitem(OPTIMIZERS, "nadam", nadam)
    cfg = TrainConfig()
    cfg.optimizer = "nadam"  # checked on assignment too (overrides, tuning)
    assert isinstance(build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg), torch.optim.NAdam)
    model, held, planned = step_and_plan("nadam", betas=(0.8, 0.95))
    assert planned == 2 * model[0].weight.numel() * 4 and 0 <= held - planned <= PER_OPTIMIZER_BYTES
