"""`behemoth plan`: the memory estimate against a measured peak, the options it weighs, and the command.

What is compared, and why it is honest: the plan's peak per process is parameters + optimizer state (exact
counts) + the busiest moment of a step (activations and gradients alive together in backward, or gradients
and the optimizer's temporaries in the step), the last part estimated from a recorded forward pass. The test
measures that last part for real: a child process trains a GPT for two steps (so the optimizer state exists),
then records how far its resident memory rises above the memory it holds between steps (peak RSS of the third
step minus RSS before it). glibc is told to map every tensor above 64 KiB on its own and to give it back when
freed, and trimmed before measuring, so RSS follows the live tensors rather than the allocator's caches. The
two sizes are an activation-heavy model and a gradient-heavy one (where activations and gradients take turns).
"""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from behemoth.cli import app
from behemoth.config import parse_size
from behemoth.distributed.plan import (
    estimate,
    example_batch,
    measure_model,
    optimizer_bytes,
    plan,
)
from behemoth.models.gpt import GPT, GPTOptions
from behemoth.training.metrics import task_loss
from tests.conftest import subprocess_env

CHILD = """
import ctypes, json, sys, torch
from behemoth.distributed.checkpointing import checkpoint_blocks
from behemoth.models.gpt import GPT, GPTOptions
from behemoth.training.metrics import task_loss

def rss(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

layers, width, batch, length, ac = json.loads(sys.argv[1])
torch.manual_seed(0)
model = GPT(256, GPTOptions(n_layer=layers, n_head=4, n_embd=width, block_size=length))
if ac:
    checkpoint_blocks(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randint(0, 256, (batch, length)); y = torch.randint(0, 256, (batch, length))
for step in range(3):
    optimizer.zero_grad(set_to_none=True)
    if step == 2:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        before = rss("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    task_loss(model(x), y).backward()
    optimizer.step()
print(rss("VmHWM") - before)
"""

SIZES = [(2, 64, 16, 128, False), (6, 384, 2, 128, False), (4, 128, 16, 128, True)]


def estimated(layers: int, width: int, batch: int, length: int, ac: bool) -> int:
    torch.manual_seed(0)
    model = GPT(256, GPTOptions(n_layer=layers, n_head=4, n_embd=width, block_size=length))
    facts = measure_model(model, example_batch("language_model", (length,)), lambda out, y: task_loss(out, y))
    option = estimate(facts, "single", 1, batch, optimizer_bytes(facts, "adamw"), ac, 1, device="cpu")
    return option.peak - option.params - option.optimizer


def test_estimate_is_within_15_percent_of_the_measured_peak_on_cpu():
    env = {**subprocess_env(), "MALLOC_MMAP_THRESHOLD_": "65536"}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for size in SIZES
    ]
    for size, child in zip(SIZES, children):
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
        measured, guess = int(out.split()[-1]), estimated(*size)
        assert abs(guess - measured) <= 0.15 * measured, (
            f"{size}: estimated {guess / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB"
        )


def test_options_and_recommendation():
    torch.manual_seed(0)
    facts = measure_model(
        GPT(256, GPTOptions(n_layer=4, n_head=4, n_embd=64, block_size=64)),
        example_batch("language_model", (64,)),
        lambda out, y: task_loss(out, y),
    )
    adam, sgd = optimizer_bytes(facts, "adamw"), optimizer_bytes(facts, "sgd", momentum=0.9)
    assert adam == 2 * facts.param_bytes and sgd == facts.param_bytes and optimizer_bytes(facts, "sgd") == 0
    rows, best = plan(facts, world=4, batch=64, optimizer=adam, memory=2**40)
    assert [r.label for r in rows] == [
        "single",
        "single+ac",
        "ddp",
        "ddp+ac",
        "fsdp",
        "fsdp+ac",
        "fsdp+offload",
        "fsdp+offload+ac",
    ]
    assert best.label == "ddp"  # plenty of memory: the fastest
    by = {r.label: r for r in rows}
    assert by["fsdp"].params == facts.param_bytes // 4 and by["fsdp+offload"].params == 0
    assert by["ddp+ac"].activations < by["ddp"].activations and by["ddp"].micro_batch == 16
    tight = by["ddp"].peak - 1  # ddp no longer fits: something slower that does
    _, best = plan(facts, world=4, batch=64, optimizer=adam, memory=tight)
    assert best.label != "ddp" and best.peak <= tight
    assert plan(facts, world=4, batch=64, optimizer=adam, memory=2**10)[1] is None
    # one rule with the data shards: binary units are powers of 1024, k/M/G/T (with or without B) of 1000
    assert parse_size("16GiB") == 16 * 2**30 and parse_size("512MiB") == 2**29
    assert parse_size("16G") == parse_size("16GB") == 16 * 10**9 and parse_size("2e9") == 2 * 10**9
    with pytest.raises(ValueError, match="expected a number of bytes"):
        parse_size("lots")


def test_plan_command_prints_every_option_and_a_recommendation():
    result = CliRunner().invoke(
        app,
        [
            "plan",
            "gpt-text",
            "--memory",
            "1GiB",
            "--nproc",
            "2",
            "data.block_size=64",
            "model.n_layer=2",
            "model.n_embd=64",
        ],
    )
    assert result.exit_code == 0, result.output
    for label in ("single", "ddp+ac", "fsdp+offload", "recommended: ddp"):
        assert label in result.output
    bad = CliRunner().invoke(app, ["plan", "gpt-text", "--memory", "lots"])
    assert bad.exit_code != 0
