"""The pieces of the distributed stage that need no second process: activation checkpointing is exact, the
pipeline split keeps parameter names, sharded checkpoints round-trip in one process and refuse to unpickle
foreign objects, and strategies refuse what they cannot do, naming the field."""

import copy
import pickle

import pytest
import torch

from behemoth.config import TrainConfig
from behemoth.distributed import DistEnv, resolve_strategy
from behemoth.distributed.checkpointing import checkpoint_blocks
from behemoth.distributed.dcp import load_sharded, read_sharded_weights, save_sharded
from behemoth.distributed.parallelize import check_strategy
from behemoth.distributed.pipeline import pipeline_model, split_gpt
from behemoth.errors import ConfigError, RunDirError
from behemoth.models.cnn import CNN, CNNOptions
from behemoth.models.gpt import GPT, GPTOptions
from behemoth.models.vit import ViT, ViTOptions
from behemoth.training.metrics import task_loss
from tests.conftest import mlp


def gpt(layers: int = 2, dropout: float = 0.0) -> GPT:
    torch.manual_seed(0)
    return GPT(64, GPTOptions(n_layer=layers, n_head=2, n_embd=16, block_size=8, dropout=dropout))


def one_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(1)  # the same dropout masks for both models
    loss = task_loss(model(x), y)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["gpt", "vit", "cnn"])
def test_activation_checkpointing_gives_the_same_loss_gradients_and_buffers(name):
    torch.manual_seed(0)
    if name == "gpt":
        model, x = (
            gpt(dropout=0.2),
            torch.randint(0, 64, (4, 8)),
        )  # dropout: the recomputation replays the RNG
        y = torch.randint(0, 64, (4, 8))
    elif name == "vit":
        model, x = (
            ViT((1, 28, 28), 10, ViTOptions(dim=16, depth=2, heads=2, dropout=0.1)),
            torch.randn(4, 1, 28, 28),
        )
        y = torch.randint(0, 10, (4,))
    else:  # batch norm: recomputing must not count the batch twice in the running statistics
        model, x = (
            CNN((1, 28, 28), 10, CNNOptions(channels=(4, 8), hidden=16, norm="batch")),
            torch.randn(4, 1, 28, 28),
        )
        y = torch.randint(0, 10, (4,))
    checkpointed = copy.deepcopy(model)
    assert checkpoint_blocks(checkpointed) == 2
    assert [n for n, _ in checkpointed.named_parameters()] == [n for n, _ in model.named_parameters()]
    loss, grads = one_step(model, x, y)
    loss_ac, grads_ac = one_step(checkpointed, x, y)
    assert torch.equal(loss, loss_ac)
    for key in grads:
        torch.testing.assert_close(grads_ac[key], grads[key], rtol=0, atol=1e-7)
    for (key, a), (_, b) in zip(model.named_buffers(), checkpointed.named_buffers()):
        assert torch.equal(a, b), key


def test_activation_checkpointing_needs_blocks():
    with pytest.raises(
        ConfigError, match="train.activation_checkpointing = true: model Sequential has no blocks"
    ):
        checkpoint_blocks(mlp())


def test_pipeline_split_keeps_names_and_gives_each_stage_its_blocks():
    stages = []
    for stage in range(3):
        model = gpt(layers=4)
        split_gpt(model, stage, 3)
        stages.append(set(model.state_dict()))
    blocks = [sorted({k.split(".")[1] for k in names if k.startswith("blocks.")}) for names in stages]
    assert blocks == [["0"], ["1", "2"], ["3"]]
    assert {"tok_emb.weight", "pos_emb.weight"} <= stages[0] and "ln_f.weight" not in stages[0]
    assert stages[1] == {k for k in stages[1] if k.startswith("blocks.")}
    assert {"tok_emb.weight", "lm_head.weight", "ln_f.weight"} <= stages[
        2
    ] and "pos_emb.weight" not in stages[2]
    assert set().union(*stages) == set(gpt(layers=4).state_dict())  # nothing lost, names unchanged


def test_sharded_checkpoint_round_trip_in_one_process(tmp_path):
    model = gpt()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    one_step(model, torch.randint(0, 64, (4, 8)), torch.randint(0, 64, (4, 8)))
    optimizer.step()
    groups = save_sharded(tmp_path / "dcp", model, optimizer, distributed=False)
    weights = read_sharded_weights(tmp_path / "dcp")  # the whole model, keyed by its own parameter names
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())

    fresh = gpt()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    load_sharded(tmp_path / "dcp", fresh, fresh_optimizer, groups, distributed=False)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert fresh_optimizer.param_groups[0]["lr"] == 0.01
    saved, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert all(torch.equal(saved[i][k], loaded[i][k]) for i in saved for k in saved[i])


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_sharded_checkpoint_metadata_is_not_unpickled_blindly(tmp_path):
    model = gpt()
    save_sharded(tmp_path / "dcp", model, torch.optim.SGD(model.parameters(), lr=0.1), distributed=False)
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(RunDirError, match="unexpected object builtins.print in checkpoint metadata"):
        read_sharded_weights(tmp_path / "dcp")


def test_strategies_refuse_what_they_cannot_do():
    two = DistEnv(rank=0, world_size=2)
    assert [resolve_strategy(s, DistEnv()) for s in ("auto", "ddp", "fsdp", "pipeline")] == ["single"] * 4
    assert resolve_strategy("auto", two) == "ddp" and resolve_strategy("pipeline", two) == "pipeline"
    with pytest.raises(ConfigError, match="train.strategy = 'single': launched with 2 processes"):
        resolve_strategy("single", two)
    with pytest.raises(ConfigError, match="train.precision = 'fp16': not with train.strategy = 'fsdp'"):
        check_strategy("fsdp", TrainConfig(precision="fp16"))
    with pytest.raises(ConfigError, match="train.fsdp_offload = true: needs train.strategy = 'fsdp'"):
        check_strategy("ddp", TrainConfig(strategy="ddp", fsdp_offload=True))
    with pytest.raises(ConfigError, match="splits GPT blocks only, not Sequential"):
        pipeline_model(mlp(), two, 4, "1f1b")
    with pytest.raises(
        ConfigError, match="train.pipeline_microbatches = 1: the 1f1b schedule needs at least one"
    ):
        pipeline_model(gpt(), two, 1, "1f1b")
    with pytest.raises(ConfigError, match="model.n_layer = 2 is less than the 3 stages"):
        split_gpt(gpt(), 0, 3)
