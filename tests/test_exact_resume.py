"""A run SIGKILLed mid-training and resumed with `behemoth train --resume` ends with the same weights, bit for
bit, as one that was never interrupted: dropout, augmentation and everything the hooks do included.

The kill lands at a random step past the first checkpoint (the step is in the failure message). The unit
tests below cover the two pieces of state such a run needs beyond the CPU RNG: the GradScaler's and each
rank's CUDA RNG (skipped without CUDA).
"""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from behemoth.distributed import DistEnv, gather_rng_states
from behemoth.distributed.collectives import set_rng_states
from behemoth.training.checkpoint import latest_checkpoint
from behemoth.training.early_stop import EarlyStopping
from behemoth.training.loop import TrainContext, checkpoint, restore
from behemoth.training.mfu import matmul_peak_flops
from behemoth.training.precision import grad_scaler, load_scaler_state, scaler_state
from tests.conftest import REPO, behemoth_cmd, failure_text, quick_train_config, subprocess_env

NEEDS_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MAX_STEPS = 32
EVERY = 5  # checkpoint every EVERY steps (and at each epoch's end)
TINY_GPT = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",  # the recipe's dropout (0.1) stays
    "data.block_size=32",
    "data.batch_size=32",
    "data.train_limit=512",  # 16 steps an epoch: the run crosses an epoch boundary
    "data.val_fraction=0.002",
    "data.test_limit=64",
    "train.warmup=5",
]
TINY_CNN = [
    "model.channels=[8,16]",
    "model.hidden=32",
    "model.dropout=0.25",  # the recipe has none: dropout shows any draw from the global RNG on resume
    "data.batch_size=32",
    "data.train_limit=3000",  # stratified 10% of the training part: 9 steps an epoch
    "data.test_limit=200",
]
RECIPES = {"gpt-text": TINY_GPT, "mnist-augment": TINY_CNN}
COMMON = [f"train.max_steps={MAX_STEPS}", f"train.checkpoint.every_steps={EVERY}", "train.log_every=1"]


def recipe_or_skip(recipe: str) -> list[str]:
    if not (REPO / "configs" / f"{recipe}.toml").is_file():
        pytest.skip(f"no {recipe} recipe in configs/")
    return [recipe, *RECIPES[recipe], *COMMON]


def start(runs: Path, name: str, args: list[str]) -> subprocess.Popen:
    # with the progress display: every hook the CLI installs runs (plain lines, stderr is no terminal)
    return spawn(behemoth_cmd("train", *args, f"runs_dir={str(runs)!r}", f"name={name}"))


def spawn(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, failure_text(out + err)


def last_step(metrics: Path) -> int:
    """The last training step metrics.jsonl reports (0 before the first)."""
    if not metrics.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def kill_at(process: subprocess.Popen, metrics: Path, step: int, timeout: float = 300) -> int:
    """SIGKILL `process` as soon as metrics.jsonl reports `step`; return the last step it reported."""
    deadline = time.monotonic() + timeout
    while last_step(metrics) < step:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(
                f"the run ended (rc {process.returncode}) before step {step}\n{failure_text(out + err)}"
            )
        assert time.monotonic() < deadline, f"no step {step} after {timeout}s"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, f"rc {process.returncode}: it ended before the kill"
    return last_step(metrics)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_killed_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, recipe):
    args = recipe_or_skip(recipe)
    seed = random.SystemRandom().randrange(2**32)
    kill_step = random.Random(seed).randint(EVERY + 1, MAX_STEPS - 14)  # leave the killer time to act
    straight = start(tmp_path, "straight", args)  # both at once: two cores
    killed = start(tmp_path, "killed", args)
    reached = kill_at(killed, tmp_path / "killed" / "metrics.jsonl", kill_step)
    where = f"{recipe}: killed at step {reached} (target {kill_step}, seed {seed})"
    assert reached < MAX_STEPS and not (tmp_path / "killed" / "model.safetensors").exists(), where
    finish(spawn(behemoth_cmd("train", "--resume", str(tmp_path / "killed"))))
    finish(straight)
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["steps"] == MAX_STEPS, where
    expected, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert expected.keys() == resumed.keys(), where
    differ = [key for key in expected if not torch.equal(expected[key], resumed[key])]
    assert not differ, f"{where}: {len(differ)}/{len(expected)} tensors differ, e.g. {differ[:5]}"


# ---- the pieces: GradScaler state and per-rank CUDA RNG through a checkpoint's state ----


def through_torch_save(value: object, path: Path) -> object:
    """What the checkpoint's state.pt gives back: saved as-is, read with weights_only=True."""
    torch.save(value, path)
    return torch.load(path, weights_only=True)


def grown_scaler(device: str, steps: int = 2) -> torch.amp.GradScaler:
    """A scaler that backed off once (inf gradients), then took `steps` - 1 good steps (its tracker moved)."""
    scaler = torch.amp.GradScaler(device, init_scale=1024.0, growth_interval=2)
    weight = torch.nn.Parameter(torch.ones(2, device=device))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for step in range(steps):
        optimizer.zero_grad()
        scale = float("inf") if step == 0 else 1.0
        scaler.scale((weight * scale).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    return scaler


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)])
def test_grad_scaler_state_round_trips_through_the_checkpoint_state(tmp_path, device):
    scaler = grown_scaler(device)
    state = through_torch_save({"grad_scaler": scaler_state(scaler)}, tmp_path / "state.pt")
    fresh = torch.amp.GradScaler(device, init_scale=1024.0, growth_interval=2)
    load_scaler_state(fresh, state["grad_scaler"])
    assert scaler.state_dict()["scale"] == 512.0 and scaler.state_dict()["_growth_tracker"] == 1
    assert fresh.state_dict() == scaler.state_dict()


def test_the_loops_checkpoint_keeps_the_grad_scaler_state(tmp_path):
    """Through the loop's own checkpoint() and restore(): save_checkpoint, state.pt, weights_only load."""
    saved, restored = scaler_context(tmp_path, grown_scaler("cpu")), scaler_context(tmp_path, None)
    checkpoint(saved, hooks=[])
    restore(restored, latest_checkpoint(tmp_path))
    assert restored.scaler.state_dict() == saved.scaler.state_dict()


def scaler_context(run_dir: Path, scaler: torch.amp.GradScaler | None) -> TrainContext:
    """The parts of a TrainContext that checkpoint() and restore() read; a fresh CPU scaler when None."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = quick_train_config()
    ctx = TrainContext(model, optimizer, scheduler, cfg, None, torch.device("cpu"), None, None, run_dir, 1)
    ctx.early_stopping = EarlyStopping(cfg.early_stop)
    ctx.scaler = scaler or torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=2)
    return ctx


def test_the_peak_timing_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    matmul_peak_flops(size=32, min_seconds=0.0, min_repeats=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_disabled_scaler_saves_nothing_and_ignores_what_it_is_given(tmp_path):
    cpu = torch.device("cpu")
    assert scaler_state(grad_scaler("bf16", cpu)) == {}
    enabled = torch.amp.GradScaler("cpu", init_scale=8.0)
    load_scaler_state(enabled, {})  # a checkpoint from a run without loss scaling: keep the fresh scaler
    assert enabled.get_scale() == 8.0
    load_scaler_state(grad_scaler("fp32", cpu), scaler_state(grown_scaler("cpu")))  # a no-op, no error


def test_rng_states_of_one_process_restore_exactly(tmp_path):
    torch.manual_seed(5)
    states = through_torch_save(gather_rng_states(None, torch.device("cpu")), tmp_path / "state.pt")
    expected = torch.rand(4)
    torch.rand(100)  # what a hook might draw after the restore
    assert set_rng_states(states, None, torch.device("cpu"))
    assert torch.equal(torch.rand(4), expected)


def test_rng_states_from_another_world_size_are_left_alone():
    states = gather_rng_states(DistEnv(), torch.device("cpu"))
    states = {kind: torch.cat([value, value]) for kind, value in states.items()}  # as if from two ranks
    torch.rand(10)
    before = torch.get_rng_state()
    assert not set_rng_states(states, None, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)


def rank_streams(rank: int, world: int, store_path: str, outs: list[str]) -> None:
    """One gloo rank: gather, draw, restore its own row, draw again; both draws go to outs[rank]."""
    import torch.distributed as dist

    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        env, cpu = DistEnv(rank=rank, world_size=world), torch.device("cpu")
        torch.manual_seed(100 + rank)  # ranks draw different dropout masks
        states = gather_rng_states(env, cpu)
        first = torch.rand(4)
        torch.manual_seed(0)  # what a resumed process starts with
        assert set_rng_states(states, env, cpu)
        torch.save({"shape": list(states["cpu"].shape), "first": first, "again": torch.rand(4)}, outs[rank])
    finally:
        dist.destroy_process_group()


def test_each_rank_gets_back_its_own_stream(tmp_path):
    import torch.multiprocessing as mp

    store, world = str(tmp_path / "store"), 2
    outs = [str(tmp_path / f"rank{rank}.pt") for rank in range(world)]
    mp.start_processes(rank_streams, args=(world, store, outs), nprocs=world, start_method="spawn")
    results = [torch.load(out, weights_only=True) for out in outs]
    assert all(r["shape"][0] == world and torch.equal(r["first"], r["again"]) for r in results)
    assert not torch.equal(results[0]["first"], results[1]["first"])


def test_legacy_rng_states_tensor_still_restores():
    """Checkpoints written before the CUDA states held one (world_size, bytes) tensor of CPU states."""
    torch.manual_seed(9)
    legacy = torch.get_rng_state().unsqueeze(0)
    expected = torch.rand(3)
    assert set_rng_states(legacy, None, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_cuda_rng_state_is_gathered_and_restored(tmp_path, device):
    device = torch.device(device, 0)
    torch.cuda.manual_seed(11)
    states = through_torch_save(gather_rng_states(None, device), tmp_path / "state.pt")
    assert set(states) == {"cpu", "cuda"} and states["cuda"].shape[0] == 1
    expected = torch.rand(8, device=device)
    torch.rand(1000, device=device)  # e.g. a timing hook's matrices
    assert set_rng_states(states, None, device)
    assert torch.equal(torch.rand(8, device=device), expected)
