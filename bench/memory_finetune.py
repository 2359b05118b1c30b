"""Peak memory of one QLoRA fine-tuning step of a Llama-shaped model at 1B, 3B and 7B parameters (issue #20).

Shapes: TinyLlama-1.1B (22 layers x 2048, intermediate 5632, 32 heads / 4 KV heads), OpenLLaMA-3B (26 x 3200,
8640, 32 heads), Llama-2-7B (32 x 4096, 11008, 32 heads); vocabulary 32000 for all. Random weights: no model
hub here, and memory does not depend on the values.

Method. Each row is a fresh subprocess (`--child`) that
  1. warms up: builds a 2-layer model of the same family the same way and trains it a step, so every
     lazily loaded library (transformers, peft, torchao, oneDNN) is resident before the baseline;
  2. reads its RSS (the baseline) and resets the kernel's peak counter (/proc/self/clear_refs);
  3. builds the model with behemoth.training.lora.random_qlora_lm: on the meta device, peft's LoRA adapters
     added, then filled Linear by Linear straight into NF4 (torchao's NF4Tensor, base_bits = 4: codes and
     double-quantized block scales drawn directly) or int8 (base_bits = 8: codes and row scales): no fp32 or
     bf16 copy of the base exists. Embeddings, norms and the output head are frozen bf16; adapters fp32
     (r = 8 on q_proj and v_proj, peft's default for Llama);
  4. trains --steps steps (default 1: LoRA's optimizer state is tiny) through behemoth.training.train (1
     sequence of 128 KJV bytes per step, AdamW on the adapters, no autocast: the base computes in bf16),
     with transformers' activation checkpointing per decoder layer (behemoth's
     train.activation_checkpointing covers its own zoo models' blocks only).
Figures: peak RSS over the whole child after the warm-up (construction + the steps), the step peak (the
largest over the steps, each measured from a reset counter), both as absolute GiB and as bytes per parameter
(absolute peak / parameters: what must fit, libraries included; and above the baseline), and step seconds.

Sizes run largest-last; a size whose predicted peak (its parameters x the bytes/param of the largest measured
run of the same bits, plus that run's baseline) exceeds --cap-gib or what the machine has free is not run
and says so.

Run: .venv/bin/python bench/memory_finetune.py            (1B, 3B, 7B; NF4 and int8)
     .venv/bin/python bench/memory_finetune.py --quick    (1B NF4 only; a smoke run)
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.memory_probe import mem_available, memory_status, reset_peak  # noqa: E402
from bench.results import write_result  # noqa: E402

GIB = 2**30
SEQ, BATCH, RANK = 128, 1, 8
VOCAB = 32000
SHAPES: dict[str, dict] = {  # the public checkpoints' configs
    "1B": {"num_hidden_layers": 22, "hidden_size": 2048, "intermediate_size": 5632, "num_key_value_heads": 4},
    "3B": {
        "num_hidden_layers": 26,
        "hidden_size": 3200,
        "intermediate_size": 8640,
        "num_key_value_heads": 32,
    },
    "7B": {
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_key_value_heads": 32,
    },
}
WARM = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512, "num_key_value_heads": 4}
TARGETS = {4: 0.8, 8: 1.4}  # bytes/param for a 7B step (issue #20)


def llama_params(shape: dict) -> int:
    """Parameters of a Llama of this shape (untied head), adapters not counted."""
    h, i, layers, kv = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], 0
    kv = h * shape["num_key_value_heads"] // 32  # width of k and v (32 attention heads)
    attention = 2 * h * h + 2 * h * kv
    return layers * (attention + 3 * h * i + 2 * h) + 2 * VOCAB * h + h


def llama_config(shape: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        **shape, num_attention_heads=32, vocab_size=VOCAB, max_position_embeddings=2048, use_cache=False
    )


def child(size: str, bits: int, threads: int, steps: int) -> dict:
    import torch

    from behemoth.config import DataConfig, LoraConfig, TrainConfig
    from behemoth.data import load_data
    from behemoth.training import BaseHook, train
    from behemoth.training.allocator import return_freed_memory
    from behemoth.training.lora import random_qlora_lm

    torch.set_num_threads(threads)
    return_freed_memory()  # glibc: freed temporaries go back to the OS at once (train.release_freed_memory)
    lora = LoraConfig(r=RANK, target_modules=["q_proj", "v_proj"], base_bits=bits)
    cfg = TrainConfig(epochs=1, max_steps=steps, optimizer="adamw", lr=1e-4, log_every=10**9)
    data = load_data(
        DataConfig(
            name="kjv", block_size=SEQ, val_fraction=0.0, train_limit=max(steps, 1) * BATCH, test_limit=1
        )
    )

    def build(shape: dict):
        model = random_qlora_lm(llama_config(shape), lora)
        hf = model.hf.base_model.model  # the transformers model under peft's wrappers
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    class Probe(BaseHook):
        def __init__(self) -> None:
            self.peaks: list[int] = []
            self.times: list[float] = []
            self.t0 = time.perf_counter()

        def on_step_end(self, ctx, metrics) -> None:
            self.times.append(time.perf_counter() - self.t0)
            self.peaks.append(memory_status()["VmHWM"])
            reset_peak()
            self.t0 = time.perf_counter()

    train(build(WARM), data, cfg, BATCH)
    import gc

    gc.collect()
    baseline = memory_status()["VmRSS"]
    reset_peak()
    started = time.perf_counter()
    model = build(SHAPES[size])
    build_seconds = time.perf_counter() - started
    build_peak = memory_status()["VmHWM"]
    reset_peak()
    probe = Probe()
    result = train(model, data, cfg, BATCH, hooks=[probe])
    return {
        "size": size,
        "bits": bits,
        "params": llama_params(SHAPES[size]),
        "adapter_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "baseline": baseline,
        "peak_build": build_peak,
        "peak_steps": probe.peaks,
        "build_seconds": build_seconds,
        "step_seconds": probe.times,
        "stop_reason": result.stop_reason,
    }


def measure(size: str, bits: int, threads: int, steps: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        size,
        str(bits),
        "--threads",
        str(threads),
        "--steps",
        str(steps),
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"size": size, "bits": bits, "failed": f"exit {done.returncode}: {tail[0]}"}
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["child_seconds"] = time.perf_counter() - started
    r["peak"] = max(r["peak_build"], *r["peak_steps"])  # the whole run after the warm-up
    r["step_peak"] = max(r["peak_steps"])
    r["bytes_per_param"] = r["peak"] / r["params"]
    r["above_baseline_per_param"] = (r["peak"] - r["baseline"]) / r["params"]
    r["step_bytes_per_param"] = r["step_peak"] / r["params"]
    return r


def predicted_peak(done: list[dict], bits: int, size: str) -> float | None:
    ok = [r for r in done if r["bits"] == bits and "failed" not in r]
    if not ok:
        return None
    ref = max(ok, key=lambda r: r["params"])
    return ref["baseline"] + ref["above_baseline_per_param"] * llama_params(SHAPES[size])


def row_text(r: dict) -> str:
    if "failed" in r or "skipped" in r:
        return f"{r['size']:>3} {r['bits']}-bit base: {r.get('failed') or r['skipped']}"
    return (
        f"{r['size']:>3} {r['bits']}-bit base {r['params'] / 1e9:5.2f}B params: whole-run peak "
        f"{r['peak'] / GIB:5.2f} GiB = {r['bytes_per_param']:.2f} B/param "
        f"({r['above_baseline_per_param']:.2f} above the {r['baseline'] / GIB:.2f} GiB baseline); "
        f"step peak {r['step_peak'] / GIB:5.2f} GiB = "
        f"{r['step_bytes_per_param']:.2f} B/param; build {r['build_seconds']:.0f} s, last step "
        f"{r['step_seconds'][-1]:.1f} s"
    )


def save(rows: list[dict], args: argparse.Namespace, done: bool) -> None:
    if args.quick:
        reduced = "--quick: 1B NF4 only"
    elif args.sizes == list(SHAPES) and args.bits == [4, 8]:
        reduced = None
    else:
        reduced = f"sizes {args.sizes}, bits {args.bits}"
    if not done:
        reduced = f"{reduced or 'full'}; stopped after {len(rows)} rows"
    write_result(
        "memory-finetune-quick" if args.quick else "memory-finetune",
        {"shapes": SHAPES, "seq": SEQ, "batch": BATCH, "lora_r": RANK, "targets": TARGETS, "rows": rows},
        {
            "training_precision": "frozen base NF4 / int8 (bf16 compute), embeddings/norms/head bf16 frozen, "
            "LoRA adapters fp32 (r 8 on q_proj, v_proj), AdamW, no autocast",
            "evaluation_precision": "n/a (memory only)",
            "peaks": "whole run = construction + the steps after the warm-up; bytes/param = absolute peak "
            "RSS / parameters (libraries included); above_baseline_per_param subtracts the warm process",
            "deviations": [
                "random weights (no checkpoints offline), drawn directly as NF4 / int8 codes",
                "activation checkpointing is transformers' gradient_checkpointing_enable (behemoth's "
                "train.activation_checkpointing covers its zoo models only)",
                "step seconds measured on a shared 2-core machine under other load: noisy",
            ],
        },
        reduced=reduced,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "BITS"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--steps",
        type=int,
        default=1,
        help="training steps per child (LoRA's optimizer state is tiny: 1 is enough)",
    )
    parser.add_argument("--quick", action="store_true", help="1B with an NF4 base only")
    parser.add_argument("--sizes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--bits", nargs="+", type=int, choices=[4, 8], default=[4, 8])
    parser.add_argument("--cap-gib", type=float, default=12.0, help="never run a size predicted above this")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.threads, args.steps)))
        return
    jobs = [("1B", 4)] if args.quick else [(s, b) for s in args.sizes for b in args.bits]
    rows: list[dict] = []
    for size, bits in jobs:
        predicted = predicted_peak(rows, bits, size)
        guard = min(args.cap_gib * GIB, mem_available() - 2 * GIB)
        if predicted is not None and predicted > guard:
            r = {
                "size": size,
                "bits": bits,
                "params": llama_params(SHAPES[size]),
                "skipped": f"predicted peak {predicted / GIB:.1f} GiB > {guard / GIB:.1f} GiB: not run",
            }
        else:
            r = measure(size, bits, args.threads, args.steps)
        rows.append(r)
        print(row_text(r), flush=True)
        # after every row: a long run stopped early keeps the rows it has
        save(rows, args, done=len(rows) == len(jobs))
    for bits, target in TARGETS.items():
        seven = next((r for r in rows if r["size"] == "7B" and r["bits"] == bits and "peak" in r), None)
        if seven is not None:
            verdict = "meets" if seven["bytes_per_param"] <= target else "misses"
            print(f"7B {bits}-bit: {seven['bytes_per_param']:.2f} B/param {verdict} the target <= {target}")
    print(f"\ncommand: python bench/memory_finetune.py {' '.join(sys.argv[1:])} (threads {args.threads})")


if __name__ == "__main__":
    main()
