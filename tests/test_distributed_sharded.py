"""FSDP2 and pipeline parallelism on CPU with real processes (torchrun, gloo), against single-process training
on the same global batch; sharded checkpoints (torch.distributed.checkpoint) that resume mid-epoch at another
world size and strategy; `behemoth export`.

All runs train the same small GPT on the KJV text; the reference is one process for two epochs.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from behemoth.cli import app
from behemoth.config import load_config
from behemoth.pipeline import run_training
from behemoth.pipeline.config import resolve_config
from behemoth.runs import open_run
from tests.conftest import behemoth_cmd
from tests.test_distributed import assert_same_weights, run

# 256 sequences of 32 tokens, 16 per step: 16 steps per epoch; adamw with a constant lr (so runs may be cut
# and extended), clip_norm 1.0 from the recipe; fp32 so that float tolerance is enough. 65 test rows in
# batches of 32: rank 0 evaluates 32 rows (1 batch), rank 1 33 rows (2 batches), which must not leave rank 1
# waiting.
GPT = [
    "data.block_size=32",
    "data.train_limit=256",
    "data.val_fraction=0.002",
    "data.test_limit=65",
    "data.batch_size=16",
    "data.eval_batch_size=32",
    "model.n_layer=2",
    "model.n_embd=32",
    "model.n_head=2",
    "model.block_size=32",
    "model.dropout=0",
    "train.precision=fp32",
    "train.schedule=constant",
    "train.warmup=0",
    "train.max_steps=32",
    "train.epochs=2",
    "train.eval_every_steps=100",
    "train.log_every=4",
]


def config(tmp_path, name: str, *extra: str):
    return load_config(
        resolve_config("gpt-text"), [*GPT, f"runs_dir={str(tmp_path)!r}", f"name={name}", *extra]
    )


def weights(tmp_path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(tmp_path / name / "model.safetensors"))


def train_cli(tmp_path, name: str, *extra: str) -> None:
    run(
        behemoth_cmd(
            "train", "gpt-text", *GPT, f"runs_dir={str(tmp_path)!r}", f"name={name}", *extra, "--no-progress"
        )
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Single-process references: two full epochs, and the first 10 steps."""
    path = tmp_path_factory.mktemp("runs")
    run_training(config(path, "straight"), progress=False)
    run_training(config(path, "ten", "train.max_steps=10"), progress=False)
    return path


def steps_on_disk(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name != "latest")


def test_fsdp_matches_one_process_and_its_shards_resume_in_one_process(runs, tmp_path):
    """FSDP on 2 ranks for 10 steps (mid-epoch) = one process; `behemoth export` consolidates its shards; one
    process resumes the sharded checkpoint and ends where the straight run did."""
    train_cli(
        tmp_path,
        "fsdp",
        "train.strategy=fsdp",
        "train.max_steps=10",
        "train.checkpoint.every_steps=4",
        "--nproc",
        "2",
    )
    run_dir = tmp_path / "fsdp"
    assert steps_on_disk(run_dir) == [
        "step-00000008",
        "step-00000010",
    ]  # kept the last 2, no temp folders left
    assert sorted(p.name for p in (run_dir / "checkpoints" / "step-00000010" / "dcp").iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]  # each rank wrote its own shard
    assert_same_weights(weights(tmp_path, "fsdp"), weights(runs, "ten"))

    out = tmp_path / "exported.safetensors"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and "sharded" in result.output, result.output
    assert_same_weights(load_file(str(out)), weights(runs, "ten"))

    _, cfg = open_run(run_dir, ["train.max_steps=32"])  # world size 1: trains as `single`
    summary = run_training(cfg, resume=run_dir, progress=False)
    assert summary["steps"] == 32 and summary["world_size"] == 1
    assert (run_dir / "checkpoints" / "step-00000032" / "model.safetensors").is_file()  # unsharded again
    assert_same_weights(weights(tmp_path, "fsdp"), weights(runs, "straight"))


def test_pipeline_resumes_one_process_then_fsdp_resumes_the_pipeline(runs, tmp_path):
    """One process for 10 steps; a 2-stage pipeline (1F1B, 2 chunks, 2 accumulated micro-batches of 8: the
    same 16 samples per step) takes it to step 20 from that checkpoint; FSDP with CPU offload and activation
    checkpointing finishes from the pipeline's shards: the straight run's weights."""
    run_training(config(tmp_path, "hops", "train.max_steps=10"), progress=False)
    run_dir = tmp_path / "hops"
    common = ["train", "--resume", str(run_dir), "--nproc", "2", "--no-progress"]
    run(
        behemoth_cmd(
            *common,
            "train.strategy=pipeline",
            "train.pipeline_microbatches=2",
            "data.batch_size=8",
            "train.accumulate=2",
            "train.max_steps=20",
        )
    )
    assert (run_dir / "checkpoints" / "step-00000020" / "dcp").is_dir()
    run(
        behemoth_cmd(
            *common,
            "train.strategy=fsdp",
            "train.fsdp_offload=true",
            "train.activation_checkpointing=true",
            "train.max_steps=32",
        )
    )  # a resumed run reads the saved config (max_steps = 10): extend it
    assert_same_weights(weights(tmp_path, "hops"), weights(runs, "straight"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [
        4,
        8,
        10,
        12,
        16,
        20,
        24,
        28,
        32,
    ]  # rank 0 only
    summary = json.loads((run_dir / "summary.json").read_text())
    straight = weights(runs, "straight")
    assert summary["world_size"] == 2
    assert summary["parameters"] == sum(
        t.numel() for k, t in straight.items() if k != "lm_head.weight"
    )  # tied


def distance(a: dict, b: dict) -> float:
    return sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a).sqrt().item()


def test_fsdp_in_bf16_differs_from_one_bf16_process_by_rounding_only(runs, tmp_path):
    """FSDP's mixed precision (parameters gathered in bf16, gradients reduced in fp32) against one process
    with bf16 autocast (which keeps some ops in fp32): they differ by bf16 rounding, i.e. no more than bf16
    itself differs from fp32, and the losses agree."""
    bf16 = ["train.precision=bf16", "train.max_steps=10"]
    run_training(config(tmp_path, "bf16", *bf16), progress=False)
    train_cli(tmp_path, "fsdp_bf16", *bf16, "train.strategy=fsdp", "--nproc", "2")
    one, two, fp32 = weights(tmp_path, "bf16"), weights(tmp_path, "fsdp_bf16"), weights(runs, "ten")
    assert distance(one, two) < 2 * distance(one, fp32)
    losses = [
        [
            json.loads(line)["train.loss"]
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            if '"train"' in line
        ]
        for name in ("bf16", "fsdp_bf16")
    ]
    assert losses[0] == pytest.approx(losses[1], rel=2e-3)
