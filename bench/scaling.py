"""Scaling: how fast behemoth trains with 1 vs 2 processes on CPU, and on GPUs the step time and peak memory
of single / DDP / FSDP (/ FSDP with CPU offload) for GPTs of a few sizes.

CPU: `behemoth train` end to end (the real engine under torchrun, gloo) on the KJV text with a small GPT:
one process (1 thread, and 2 threads) against 2 processes with 1 thread each (the same 2 cores) for ddp,
fsdp and pipeline. samples/s come from each run's summary (the training loop only, not start-up); runs are
interleaved and the medians of --repeats are printed. Headline (issue #19): the same cores on both sides,
2 processes x 1 thread against 1 process x 2 threads; the ratio to 1 process x 1 thread is shown beside it.
Writes bench/results/scaling.json (every repeat's samples/s).
GPU (skipped without CUDA): a worker started by torchrun with one process per GPU wraps a GPT-2-shaped model
(vocabulary 50304, 1024 tokens) with behemoth's own wrappers (DistributedDataParallel, distributed.fsdp.
shard_model with bf16 mixed precision) and times bf16 steps (median after warm-up) and the peak of
torch.cuda.max_memory_allocated. With one GPU, DDP and FSDP run as one-rank groups: their overhead and
FSDP offload's memory saving show, not their scaling.

Run: .venv/bin/python bench/scaling.py [--repeats 3] [--cpu-only | --gpu-only] [--gpu-sizes 124M,350M]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import spread, write_result  # noqa: E402

CPU_GPT = [
    "data.block_size=64",
    "data.train_limit=2048",
    "data.val_fraction=0.002",
    "data.test_limit=64",
    "data.batch_size=32",
    "model.n_layer=4",
    "model.n_embd=128",
    "model.n_head=4",
    "model.block_size=64",
    "model.dropout=0",
    "train.precision=fp32",
    "train.schedule=constant",
    "train.warmup=0",
    "train.max_steps=40",
    "train.eval_every_steps=1000",
    "train.log_every=1000",
    "train.clip_norm=1.0",
]
# (label, processes, threads per process, strategy): 1 process with 2 threads uses the same 2 cores as
# 2 processes with 1 thread; 1 process with 1 thread is the scaling baseline (OpenMP threads degrade badly
# when other work shares the cores, processes less so)
CPU_CASES = [
    ("1 proc x 1 thr", 1, 1, "single"),
    ("1 proc x 2 thr", 1, 2, "single"),
    ("2 x ddp", 2, 1, "ddp"),
    ("2 x fsdp", 2, 1, "fsdp"),
    ("2 x pipeline", 2, 1, "pipeline"),
]
GPU_SIZES = {"124M": (12, 768, 12), "350M": (24, 1024, 16), "774M": (36, 1280, 20)}  # layers, width, heads
GPU_CASES = ["single", "ddp", "fsdp", "fsdp+offload", "fsdp+ac"]


def cpu_run(runs: Path, name: str, nproc: int, threads: int, strategy: str) -> float:
    cmd = [
        sys.executable,
        "-m",
        "behemoth",
        "train",
        "gpt-text",
        *CPU_GPT,
        f"runs_dir={str(runs)!r}",
        f"name={name}",
        f"train.strategy={strategy}",
        f"train.threads={threads}",
        "--overwrite",
        "--no-progress",
    ]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads((runs / name / "summary.json").read_text())["samples_per_second"]


def cpu_table(repeats: int) -> dict[str, dict]:
    rates: dict[str, list[float]] = {label: [] for label, *_ in CPU_CASES}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):  # interleaved: load from other work hits every case alike
            for label, nproc, threads, strategy in CPU_CASES:
                rates[label].append(
                    cpu_run(Path(tmp), f"run{nproc}{threads}{strategy}", nproc, threads, strategy)
                )
    base = statistics.median(rates["1 proc x 1 thr"])
    same = statistics.median(rates["1 proc x 2 thr"])
    print(f"\nCPU, GPT 4x128 on KJV (T=64, global batch 32), {os.cpu_count()} cores, medians of {repeats}")
    print(f"{'case':<16}{'samples/s':>10}{'vs 1x2 (same cores)':>21}{'vs 1x1':>8}")
    figures = {}
    for label, values in rates.items():
        median = statistics.median(values)
        print(f"{label:<16}{median:>10.0f}{median / same:>20.2f}x{median / base:>7.2f}x")
        figures[label] = {**spread(values), "vs_same_cores": median / same, "vs_one_thread": median / base}
    return figures


def gpu_worker(size: str, case: str, steps: int, batch: int) -> None:
    """One rank of a GPU measurement (started by torchrun); rank 0 prints one JSON line."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from behemoth.distributed import read_env
    from behemoth.distributed.checkpointing import checkpoint_blocks
    from behemoth.distributed.fsdp import shard_model
    from behemoth.models.gpt import GPT, GPTOptions
    from behemoth.training.metrics import task_loss
    from behemoth.training.precision import autocast

    env = read_env().on_device("cuda")
    torch.cuda.set_device(env.device)
    dist.init_process_group("nccl", device_id=env.device)  # also for one GPU: a one-rank group
    layers, width, heads = GPU_SIZES[size]
    torch.manual_seed(0)
    model = GPT(50304, GPTOptions(n_layer=layers, n_head=heads, n_embd=width, block_size=1024)).to(env.device)
    if case.endswith("+ac"):
        checkpoint_blocks(model)
    if case == "ddp":
        step_module = DistributedDataParallel(model, device_ids=[env.local_rank])
    elif case.startswith("fsdp"):
        step_module = shard_model(model, env, "bf16", offload=case == "fsdp+offload")
    else:
        step_module = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 50304, (batch, 1024), device=env.device)
    times = []
    for step in range(steps + 3):
        if step == 3:  # optimizer state exists: measure the steady state
            torch.cuda.reset_peak_memory_stats(env.device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast("bf16", env.device):
            logits = step_module(x)
        task_loss(logits, x).backward()
        optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(env.device)
    step_s = statistics.median(times[3:])
    if env.is_main:
        print(
            json.dumps(
                {
                    "size": size,
                    "case": case,
                    "world": env.world_size,
                    "step_ms": 1000 * step_s,
                    "tokens_per_s": batch * 1024 * env.world_size / step_s,
                    "peak_gib": peak / 2**30,
                }
            )
        )
    dist.destroy_process_group()


def gpu_table(sizes: list[str], steps: int, batch: int) -> None:
    gpus = torch.cuda.device_count()
    print(
        f"\nGPU: {torch.cuda.get_device_name(0)} x {gpus}, GPT-2 shapes (T=1024, vocab 50304), bf16, AdamW, "
        f"{batch} sequences per GPU, median of {steps} steps"
    )
    print(f"{'size':<6}{'case':<14}{'GPUs':>5}{'step ms':>10}{'tokens/s':>12}{'peak GiB':>10}")
    for size in sizes:
        for case in GPU_CASES:
            world = 1 if case == "single" else gpus
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={world}",
                __file__,
                "--gpu-worker",
                size,
                case,
                "--steps",
                str(steps),
                "--batch",
                str(batch),
            ]
            result = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
            )
            lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
            if result.returncode or not lines:
                tail = (result.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{size:<6}{case:<14}{world:>5}  failed: {tail[:100]}")
                continue
            row = json.loads(lines[-1])
            print(
                f"{size:<6}{case:<14}{world:>5}{row['step_ms']:>10.1f}{row['tokens_per_s']:>12,.0f}"
                f"{row['peak_gib']:>10.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--gpu-sizes", default="124M,350M,774M")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gpu-worker", nargs=2, metavar=("SIZE", "CASE"))
    args = parser.parse_args()
    if args.gpu_worker:
        gpu_worker(*args.gpu_worker, args.steps, args.batch)
        return
    print("command: .venv/bin/python bench/scaling.py " + " ".join(sys.argv[1:]))
    if not args.gpu_only:
        figures = cpu_table(args.repeats)
        write_result(
            "scaling",
            {"cpu": figures},
            {
                "training_precision": "fp32",
                "evaluation_precision": "n/a (throughput only)",
                "repeats": f"{args.repeats} interleaved repeats per case, medians",
                "comparison": "headline: 2 processes x 1 thread vs 1 process x 2 threads (the same 2 cores)",
                "deviations": [],
            },
            reduced=None if args.repeats >= 3 else f"{args.repeats} repeats",
        )
    if not args.cpu_only:
        if torch.cuda.is_available():
            gpu_table(args.gpu_sizes.split(","), args.steps, args.batch)
        else:
            print("\nGPU: skipped (no CUDA device here)")


if __name__ == "__main__":
    main()
