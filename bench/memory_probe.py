"""The measuring side of bench/memory.py: one memory setting at one GPT size, in a fresh process.

`measure` runs this file as a subprocess (`python bench/memory_probe.py SETTING K THREADS`), whose `child`
warms up, takes the baseline RSS, builds the GPT and trains 2 steps, reporting the peaks of building + step 1
and of step 2; bench/memory.py's docstring gives the method, bench/memory_finetune.py reuses the RSS readers.
"""

import ctypes
import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 2**30
SEQ, BATCH = 128, 4
SETTINGS: dict[str, dict] = {
    "plain": {},  # fp32 parameters and compute, torch AdamW (for-loop kernel, torch's CPU default)
    "foreach": {"optimizer_impl": "foreach"},
    "fused": {"optimizer_impl": "fused"},
    "bf16 autocast": {"precision": "bf16"},
    "accumulate 4": {"accumulate": 4},  # same 4 sequences per step, one at a time
    "activation ckpt": {"activation_checkpointing": True},
    "bf16 params": {"param_dtype": "bf16"},
    "adamw8bit": {"optimizer": "adamw8bit"},
    "release freed": {"release_freed_memory": True},  # glibc keeps freed temporaries resident otherwise
    "best, glibc default": {
        "param_dtype": "bf16",
        "optimizer": "adamw8bit",
        "activation_checkpointing": True,
    },
    "best": {
        "param_dtype": "bf16",
        "optimizer": "adamw8bit",
        "activation_checkpointing": True,
        "release_freed_memory": True,
    },
}


def gpt_shape(k: int) -> dict:
    return {"n_layer": k, "n_head": k, "n_embd": 64 * k, "block_size": SEQ}


def gpt_params(k: int) -> int:
    c = 64 * k
    return (
        k * (12 * c * c + 13 * c) + 256 * c + SEQ * c + 2 * c
    )  # blocks (with biases, LNs), embeddings, ln_f


def memory_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in bytes."""
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def mem_available() -> int:
    return int(re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) * 1024


def child(setting: str, k: int, threads: int) -> dict:
    """In this (fresh) process: warm up, take the baseline, build the size-k GPT and train 2 steps."""
    import torch

    from behemoth.config import DataConfig, TrainConfig
    from behemoth.data import load_data
    from behemoth.models.gpt import GPT, GPTOptions
    from behemoth.training import BaseHook, train
    from behemoth.training.allocator import return_freed_memory
    from behemoth.training.optim import optimizer_state_bytes
    from behemoth.training.precision import build_with_param_dtype

    torch.set_num_threads(threads)
    options = SETTINGS[setting]
    if options.get("release_freed_memory"):
        return_freed_memory()  # what behemoth.pipeline.prepare does for train.release_freed_memory = true
    accumulate = options.get("accumulate", 1)
    cfg = TrainConfig(
        **{
            "epochs": 1,
            "max_steps": 2,
            "optimizer": "adamw",
            "lr": 1e-4,
            "weight_decay": 0.1,
            "log_every": 10**9,
            **options,
        }
    )
    data = load_data(
        DataConfig(name="kjv", block_size=SEQ, val_fraction=0.0, train_limit=2 * BATCH, test_limit=1)
    )

    def build(size: int):
        torch.manual_seed(0)
        return build_with_param_dtype(lambda: GPT(256, GPTOptions(**gpt_shape(size))), cfg.param_dtype)

    class Probe(BaseHook):
        def __init__(self) -> None:
            self.peaks: list[int] = []
            self.state: dict[str, int] = {}
            self.times: list[float] = []
            self.t0 = time.perf_counter()

        def on_step_end(self, ctx, metrics) -> None:
            self.times.append(time.perf_counter() - self.t0)
            self.peaks.append(memory_status()["VmHWM"])
            model = ctx.model
            self.state = {
                "params": sum(p.numel() * p.element_size() for p in model.parameters()),
                "grads": sum(
                    p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
                ),
                "optimizer": optimizer_state_bytes(ctx.optimizer),
            }
            reset_peak()
            self.t0 = time.perf_counter()

    warm = build(1)
    train(warm, data, cfg, BATCH // accumulate)
    del warm
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back to the OS: the baseline is what is in use
    baseline = memory_status()["VmRSS"]
    reset_peak()
    started = time.perf_counter()
    model = build(k)
    build_seconds = time.perf_counter() - started
    probe = Probe()
    train(model, data, cfg, BATCH // accumulate, hooks=[probe])
    params = sum(p.numel() for p in model.parameters())
    return {
        "setting": setting,
        "k": k,
        "params": params,
        "baseline": baseline,
        "peak_step1": probe.peaks[0],
        "peak_step2": probe.peaks[1],
        "model_state": probe.state,
        "build_seconds": build_seconds,
        "step_seconds": probe.times,
    }


def measure(setting: str, k: int, threads: int) -> dict:
    """`child` run in a fresh process, with its bytes per parameter (whole run and steady state)."""
    cmd = [sys.executable, __file__, setting, str(k), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {
            "setting": setting,
            "k": k,
            "params": gpt_params(k),
            "failed": f"exit {done.returncode}: {tail[0]}",
        }
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["bytes_per_param"] = (result["peak_step2"] - result["baseline"]) / result["params"]
    result["state_per_param"] = sum(result["model_state"].values()) / result["params"]
    result["peak"] = max(result["peak_step1"], result["peak_step2"])  # what one training step needs in all
    result["whole_bytes_per_param"] = (result["peak"] - result["baseline"]) / result["params"]
    return result


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
