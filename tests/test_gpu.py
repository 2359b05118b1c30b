"""CUDA paths of the training engine: bf16 autocast and fp16 with a grad scaler. Skipped without a GPU."""

import pytest
import torch

from behemoth.training import train
from tests.conftest import mlp, quick_train_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_trains_on_cuda(digits_bundle, precision):
    model = mlp()
    result = train(
        model, digits_bundle, quick_train_config(epochs=4, precision=precision, device="cuda"), batch_size=32
    )
    assert next(model.parameters()).is_cuda
    assert result.last_eval["val.acc"] > 0.9 and not result.diverged
    assert result.peak_memory_mb > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- distributed paths on CUDA (NCCL, FSDP2 mixed precision and offload, activation checkpointing) ----


def gpt_batch(seed: int = 0):
    from behemoth.models.gpt import GPT, GPTOptions

    torch.manual_seed(seed)
    model = GPT(256, GPTOptions(n_layer=2, n_head=2, n_embd=64, block_size=64, dropout=0.1)).cuda()
    x = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(1)).cuda()
    return model, x


def bf16_steps(step_module, params, x, steps: int = 6) -> list[float]:
    from behemoth.training.metrics import task_loss

    optimizer = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = task_loss(step_module(x), x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def one_rank_nccl_group():
    import torch.distributed as dist

    dist.init_process_group(
        "nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=torch.device("cuda", 0)
    )
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("offload", [False, True])
def test_fsdp_on_cuda_with_nccl_tracks_one_process(one_rank_nccl_group, offload):
    from behemoth.distributed import DistEnv
    from behemoth.distributed.fsdp import shard_model

    model, x = gpt_batch()
    reference = bf16_steps(model, model.parameters(), x)
    sharded, _ = gpt_batch()
    shard_model(sharded, DistEnv(device=torch.device("cuda", 0)), precision="bf16", offload=offload)
    losses = bf16_steps(sharded, sharded.parameters(), x)
    assert next(sharded.parameters()).device.type == ("cpu" if offload else "cuda")
    assert losses[-1] < losses[0] and losses == pytest.approx(reference, rel=2e-2)


def test_activation_checkpointing_on_cuda_is_exact():
    from behemoth.distributed.checkpointing import checkpoint_blocks
    from behemoth.training.metrics import task_loss

    grads = []
    for checkpointed in (False, True):
        model, x = gpt_batch()
        if checkpointed:
            checkpoint_blocks(model)
        torch.manual_seed(3)  # dropout: the recomputation must replay the CUDA RNG
        with torch.autocast("cuda", dtype=torch.bfloat16):
            task_loss(model(x), x).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "pipeline"])
def test_two_gpus_with_nccl_match_one(tmp_path, strategy):
    import subprocess

    from safetensors.torch import load_file

    from tests.conftest import behemoth_cmd, failure_text, subprocess_env

    gpt = [
        "gpt-text",
        f"runs_dir={str(tmp_path)!r}",
        "data.block_size=64",
        "data.train_limit=512",
        "data.val_fraction=0.002",
        "data.test_limit=64",
        "data.batch_size=16",
        "model.n_layer=2",
        "model.n_embd=64",
        "model.n_head=2",
        "model.block_size=64",
        "model.dropout=0",
        "train.precision=fp32",
        "train.max_steps=10",
        "train.device=cuda",
        "--no-progress",
    ]
    for name, extra in (("one", []), ("two", [f"train.strategy={strategy}", "--nproc", "2"])):
        result = subprocess.run(
            behemoth_cmd("train", *gpt, f"name={name}", *extra),
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=600,
        )
        assert result.returncode == 0, failure_text(result.stderr)
    one, two = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("one", "two"))
    for key in one:  # TF32 / cuBLAS reduction order: close, not bitwise
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4)


def test_broadcast_flag_sends_a_cuda_tensor_over_nccl(one_rank_nccl_group):
    """NCCL moves CUDA tensors only: the flag must be built on the group's device. A group of one rank, told
    it is one of two, runs the real broadcast."""
    from behemoth.distributed import DistEnv, broadcast_flag

    env = DistEnv(rank=0, world_size=2, device=torch.device("cuda", 0))
    assert broadcast_flag(True, env) is True and broadcast_flag(False, env) is False
