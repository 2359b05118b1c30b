"""Distributed training on CPU with real processes (torchrun, gloo): DDP equals single-process training
on the same global batch, and a run resumes at another world size."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from behemoth.config import load_config
from behemoth.distributed import DistEnv, shard, shard_rows
from behemoth.distributed.launch import strip_launch_options, torchrun_args
from behemoth.pipeline import run_training
from behemoth.pipeline.config import resolve_config
from tests.conftest import behemoth_cmd, failure_text, subprocess_env

# digits MLP, no early stopping, a constant lr so a resumed run may extend the number of epochs
COMMON = ["train.early_stop.patience=0", "train.schedule=constant", "data.batch_size=64", "train.log_every=5"]


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert result.returncode == 0, failure_text(result.stderr)


def single_process(tmp_path, name: str, epochs: int) -> dict:
    cfg = load_config(
        resolve_config("digits"),
        [*COMMON, f"runs_dir={str(tmp_path)!r}", f"name={name}", f"train.epochs={epochs}"],
    )
    run_training(cfg, progress=False)
    return load_file(str(tmp_path / name / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-5)


def test_shards_partition_each_global_batch():
    batch = torch.arange(100, 164)
    parts = [shard(batch, DistEnv(rank=r, world_size=4)) for r in range(4)]
    assert torch.equal(torch.cat(parts), batch) and all(len(p) == 16 for p in parts)
    rows = [shard_rows(10, DistEnv(rank=r, world_size=3)) for r in range(3)]
    assert [(s.start, s.stop) for s in rows] == [(0, 3), (3, 6), (6, 10)]


def test_launcher_arguments():
    assert strip_launch_options(["train", "digits", "--nproc", "2", "--max-restarts=3", "train.lr=1"]) == [
        "train",
        "digits",
        "train.lr=1",
    ]
    args = torchrun_args(2, ["train", "digits"], max_restarts=1)
    assert args[:3] == ["--nproc-per-node=2", "--max-restarts=1", "--standalone"]
    assert args[-4:] == ["-m", "behemoth", "train", "digits"]
    multi = torchrun_args(4, ["train"], nnodes="2", node_rank=1, rdzv_endpoint="10.0.0.1:29400")
    assert (
        "--rdzv-endpoint=10.0.0.1:29400" in multi and "--node-rank=1" in multi and "--standalone" not in multi
    )


def test_ddp_two_processes_match_single_process(tmp_path):
    single = single_process(tmp_path, "single", epochs=3)
    run(
        behemoth_cmd(
            "train",
            "digits",
            *COMMON,
            f"runs_dir={str(tmp_path)!r}",
            "name=ddp",
            "train.epochs=3",
            "--nproc",
            "2",
            "--no-progress",
        )
    )
    assert_same_weights(load_file(str(tmp_path / "ddp" / "model.safetensors")), single)
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())  # rank 0 only


def test_resume_across_world_sizes(tmp_path):
    straight = single_process(tmp_path, "straight", epochs=2)
    # world size 2 (plain torchrun) for epoch 1, then world size 1 for epoch 2
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "behemoth",
            "train",
            "digits",
            *COMMON,
            f"runs_dir={str(tmp_path)!r}",
            "name=two_then_one",
            "train.epochs=1",
            "--no-progress",
        ]
    )
    run(behemoth_cmd("train", "--resume", str(tmp_path / "two_then_one"), "train.epochs=2", "--no-progress"))
    assert_same_weights(load_file(str(tmp_path / "two_then_one" / "model.safetensors")), straight)
    # and the other way: world size 1, then 2
    single_process(tmp_path, "one_then_two", epochs=1)
    run(
        behemoth_cmd(
            "train",
            "--resume",
            str(tmp_path / "one_then_two"),
            "train.epochs=2",
            "--nproc",
            "2",
            "--no-progress",
        )
    )
    assert_same_weights(load_file(str(tmp_path / "one_then_two" / "model.safetensors")), straight)


def test_batch_must_split_evenly():
    from behemoth.distributed import check_divisible
    from behemoth.errors import ConfigError

    with pytest.raises(ConfigError, match="data.batch_size = 63: must be divisible by the 2 processes"):
        check_divisible(63, DistEnv(rank=0, world_size=2))


def test_early_stopping_stops_every_rank_together(tmp_path):
    import json

    # min_delta is unreachable: the first evaluation sets the best, the next one stops the run
    run(
        behemoth_cmd(
            "train",
            "digits",
            f"runs_dir={str(tmp_path)!r}",
            "name=es",
            "train.epochs=20",
            "train.early_stop.patience=1",
            "train.early_stop.min_delta=100",
            "--nproc",
            "2",
            "--no-progress",
        )
    )
    summary = json.loads((tmp_path / "es" / "summary.json").read_text())
    assert (
        summary["epochs"] == 2 and "early stopping" in summary["stop_reason"] and summary["world_size"] == 2
    )


def worker_pids(launcher_pid: int) -> list[int]:
    """torchrun's worker processes: the children of the launcher that run `-m behemoth`."""
    from pathlib import Path

    children = []
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(pid) for pid in text]
    return [pid for pid in children if b"behemoth" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_killed_rank_is_restarted_and_the_run_resumes(tmp_path):
    """--max-restarts 1: SIGKILL one rank mid-epoch; torchrun restarts the group, which resumes from the last
    checkpoint and finishes with the weights of an uninterrupted 2-process run."""
    import os
    import signal
    import time

    common = [
        "mnist-cnn",
        f"runs_dir={str(tmp_path)!r}",
        "data.train_limit=3000",
        "data.batch_size=32",
        "train.epochs=2",
        "train.precision=fp32",
        "train.checkpoint.every_steps=10",
        "--nproc",
        "2",
        "--no-progress",
    ]
    run(behemoth_cmd("train", *common, "name=straight"))
    launcher = subprocess.Popen(
        behemoth_cmd("train", *common, "name=killed", "--max-restarts", "1"),
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and launcher.poll() is None and killed is None:
        if latest.is_file() and int(latest.read_text().split("-")[1]) >= 20:
            pids = worker_pids(launcher.pid)
            if pids:
                killed = pids[-1]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.02)
    _, stderr = launcher.communicate(timeout=300)
    assert killed is not None, "the run ended before a rank could be killed"
    assert launcher.returncode == 0, failure_text(stderr)
    assert (
        "failed (exitcode: -9)" in stderr
    )  # torchrun saw the killed worker, restarted the group, and it finished
    assert_same_weights(
        load_file(str(tmp_path / "killed" / "model.safetensors")),
        load_file(str(tmp_path / "straight" / "model.safetensors")),
    )
