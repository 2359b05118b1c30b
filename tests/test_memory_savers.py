"""Memory savers as config switches: each trains a tiny GPT on KJV bytes close to the plain fp32 AdamW run,
and each really stores less (bf16 parameters and gradients, 8-bit Adam moments).

One table of cases runs through the same invariant (loss curve and final weights near the reference);
the tolerances say how exact each saver is meant to be: kernel choices and activation checkpointing are
exact, bf16 storage and 8-bit moments are close.
"""

import pytest
import torch

from behemoth.config import DataConfig, TrainConfig
from behemoth.data import load_data
from behemoth.errors import ConfigError
from behemoth.models.gpt import GPT, GPTOptions
from behemoth.training import BaseHook, latest_checkpoint, train
from behemoth.training.optim import optimizer_for, optimizer_state_bytes
from behemoth.training.precision import build_with_param_dtype

STEPS = 20


@pytest.fixture(scope="module")
def kjv_tiny():
    return load_data(
        DataConfig(name="kjv", block_size=32, val_fraction=0.0, train_limit=16 * STEPS, test_limit=8)
    )


def tiny_gpt(param_dtype: str = "fp32") -> GPT:
    torch.manual_seed(0)
    return build_with_param_dtype(
        lambda: GPT(256, GPTOptions(n_layer=2, n_head=2, n_embd=64, block_size=32)), param_dtype
    )


def config(**overrides) -> TrainConfig:
    base = dict(
        epochs=1,
        max_steps=STEPS,
        optimizer="adamw",
        lr=1e-3,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        clip_norm=1.0,
        log_every=100,
    )
    return TrainConfig(**{**base, **overrides})


class LossCurve(BaseHook):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, ctx, metrics) -> None:
        self.losses.append(metrics["train.loss"])


def run(data, batch_size: int = 16, **overrides) -> tuple[list[float], dict[str, torch.Tensor], GPT]:
    cfg = config(**overrides)
    model = tiny_gpt(cfg.param_dtype)
    curve = LossCurve()
    train(model, data, cfg, batch_size, hooks=[curve])
    return curve.losses, {k: v.float() for k, v in model.state_dict().items()}, model


@pytest.fixture(scope="module")
def reference(kjv_tiny):
    losses, weights, _ = run(kjv_tiny)
    assert losses[-1] < losses[0] - 1.0  # the plain run learns: the comparisons below mean something
    return losses, weights, {k: v.float() for k, v in tiny_gpt().state_dict().items()}


# name: (overrides, micro-batch size, max relative loss gap per step, weight gap / weight change)
SAVERS = {
    "forloop kernel": (dict(optimizer_impl="forloop"), 16, 1e-6, 1e-5),
    "foreach kernel": (dict(optimizer_impl="foreach"), 16, 1e-5, 1e-4),
    "fused kernel": (dict(optimizer_impl="fused"), 16, 1e-5, 1e-4),
    "gradient accumulation 8 x 2": (dict(accumulate=2), 8, 1e-5, 1e-3),
    "activation checkpointing": (dict(activation_checkpointing=True), 16, 1e-6, 1e-5),
    "8-bit AdamW moments": (dict(optimizer="adamw8bit"), 16, 5e-3, 0.1),
    "bf16 parameters": (dict(param_dtype="bf16"), 16, 0.03, 0.15),
    "bf16 parameters + 8-bit AdamW": (dict(param_dtype="bf16", optimizer="adamw8bit"), 16, 0.03, 0.15),
    "all: bf16 + 8-bit + checkpointing": (
        dict(param_dtype="bf16", optimizer="adamw8bit", activation_checkpointing=True),
        16,
        0.03,
        0.15,
    ),
}


@pytest.mark.parametrize("name", list(SAVERS))
def test_saver_trains_like_the_plain_run(name, kjv_tiny, reference):
    overrides, batch_size, loss_tol, weight_tol = SAVERS[name]
    ref_losses, ref_weights, initial = reference
    losses, weights, _ = run(kjv_tiny, batch_size, **overrides)
    assert len(losses) == len(ref_losses) == STEPS
    gaps = [abs(a - b) / b for a, b in zip(losses, ref_losses)]
    assert max(gaps) <= loss_tol, f"{name}: loss differs by up to {max(gaps):.2%}"
    drift = sum((weights[k] - ref_weights[k]).norm() ** 2 for k in weights) ** 0.5
    change = sum((ref_weights[k] - initial[k]).norm() ** 2 for k in weights) ** 0.5
    assert drift / change <= weight_tol, f"{name}: weights drift {drift / change:.3f} of the update"


def test_bf16_parameters_store_half_the_bytes(kjv_tiny):
    _, _, plain = run(kjv_tiny, max_steps=1)
    _, _, half = run(kjv_tiny, max_steps=1, param_dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.bfloat16 for p in half.parameters())
    nbytes = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    assert nbytes(half) * 2 == nbytes(plain)
    x = kjv_tiny.train.x[:2]
    assert half(x).dtype == torch.bfloat16 and half(x).shape == plain(x).shape  # token ids go straight in


def test_8bit_moments_take_a_quarter_of_the_bytes(kjv_tiny):
    states = {}
    for name in ("adamw", "adamw8bit"):
        model = tiny_gpt()
        optimizer = optimizer_for(model, config(optimizer=name))
        model(kjv_tiny.train.x[:4]).float().mean().backward()
        optimizer.step()
        states[name] = optimizer_state_bytes(optimizer)
    params = sum(p.numel() for p in tiny_gpt().parameters())
    assert states["adamw"] == pytest.approx(8 * params, rel=0.01)  # two fp32 moments (+ step counters)
    # blockwise 8-bit: 2 bytes + one fp32 scale per 256 values; tensors under 4096 values stay fp32
    assert states["adamw8bit"] < 0.3 * states["adamw"]


def test_8bit_state_survives_a_checkpoint_and_resumes_exactly(kjv_tiny, tmp_path):
    cfg = config(optimizer="adamw8bit", max_steps=6)
    straight = tiny_gpt()
    train(straight, kjv_tiny, cfg, 16)
    first = tiny_gpt()
    train(first, kjv_tiny, config(optimizer="adamw8bit", max_steps=3), 16, run_dir=tmp_path)
    resumed = tiny_gpt()
    train(resumed, kjv_tiny, cfg, 16, run_dir=tmp_path, resume_from=latest_checkpoint(tmp_path))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_impossible_combinations_fail_with_the_field_name(kjv_tiny):
    model = tiny_gpt()
    with pytest.raises(
        ConfigError, match=r"train.optimizer_impl = 'fused': torch.optim has no fused rmsprop"
    ):
        optimizer_for(model, config(optimizer="rmsprop", optimizer_impl="fused"))
    with pytest.raises(ConfigError, match=r"train.optimizer_impl = 'foreach': adamw8bit has one kernel"):
        optimizer_for(model, config(optimizer="adamw8bit", optimizer_impl="foreach"))
    with pytest.raises(ConfigError, match=r"train.param_dtype = 'bf16': the model's parameters are float32"):
        train(model, kjv_tiny, config(param_dtype="bf16"), 16)


MALLOC_PROBE = """
import ctypes, runpy, sys
libc = ctypes.CDLL(None)
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "on":
    assert runpy.run_path(sys.argv[2])["return_freed_memory"]()
libc.free(libc.malloc(16 << 20))  # by default glibc now raises its mmap threshold to 16 MiB
before = libc.mallinfo2().hblkhd
block = libc.malloc(1 << 20)  # a 1 MiB temporary: its own mapping (returned on free) or heap (kept)?
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


@pytest.mark.skipif(not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_release_freed_memory_maps_temporaries_of_64k_and_more():
    import subprocess
    import sys

    from behemoth.training import allocator

    mapped = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", MALLOC_PROBE, mode, allocator.__file__],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for mode in ("off", "on")
    }
    assert mapped["off"] == 0  # glibc's default: the freed 1 MiB would stay resident in the heap
    assert mapped["on"] >= 1 << 20  # train.release_freed_memory: mmapped, so freeing it unmaps it
