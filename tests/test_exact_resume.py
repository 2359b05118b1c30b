"""The pieces of state an exact resume needs beyond the weights, each through a checkpoint: the GradScaler's,
each rank's CPU and CUDA RNG (CUDA cases skip without a GPU), a BPE run's saved tokenizer; and randomness
outside training (the MFU timing) that must leave the training streams alone.

tests/test_resume_table.py kills every shipped recipe with SIGKILL and checks the resumed weights bitwise.
"""

from pathlib import Path

import pytest
import torch

from behemoth.distributed import DistEnv, gather_rng_states
from behemoth.distributed.collectives import set_rng_states
from behemoth.training.checkpoint import latest_checkpoint
from behemoth.training.early_stop import EarlyStopping
from behemoth.training.loop import TrainContext, checkpoint, restore
from behemoth.training.mfu import matmul_peak_flops
from behemoth.training.precision import grad_scaler, load_scaler_state, scaler_state
from tests.conftest import quick_train_config

NEEDS_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
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


def test_a_resumed_bpe_run_reads_its_saved_tokenizer_instead_of_training_one(tmp_path, monkeypatch):
    import behemoth.data.tokenizers as tokenizers
    from behemoth.pipeline.config import load_run_config
    from behemoth.pipeline.train import run_training

    overrides = [
        *(o for o in TINY_GPT if not o.startswith("data.train_limit")),
        "data.train_limit=64",
        "data.vocab_size=300",
        "train.warmup=1",
        "train.max_steps=4",
        "train.checkpoint.every_steps=2",
        f"runs_dir={str(tmp_path)!r}",
    ]
    cfg = load_run_config("gpt-bpe", overrides)
    run_training(cfg, progress=False)
    saved = (tmp_path / "gpt-bpe" / "tokenizer.json").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("the resumed run trained a new BPE tokenizer")

    monkeypatch.setattr(tokenizers, "train_bpe", no_training)
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 6})})
    summary = run_training(longer, resume=tmp_path / "gpt-bpe", progress=False)
    assert summary["steps"] == 6
    assert (tmp_path / "gpt-bpe" / "tokenizer.json").read_text() == saved


def test_tokenizer_file_needs_bpe():
    from behemoth.errors import ConfigError
    from behemoth.pipeline.config import load_run_config

    with pytest.raises(ConfigError, match="tokenizer_file.*needs data.tokenizer = 'bpe'"):
        load_run_config("gpt-text", ["data.tokenizer_file='x.json'"])
