"""Which of transformers' attention implementations trains faster on this CPU, by sequence length: the
crossover behind models/hf_attention.py's EAGER_MAX_TOKENS ("auto" trains with "eager" up to it, "sdpa"
above).

One Llama decoder layer (transformers' own LlamaModel, its MLP shrunk to 64 so that the attention is most of
the step) runs forward and backward under bf16 autocast on 2,048 tokens per batch (batch = 2048 / T), once
with attn_implementation "sdpa" (torch's CPU flash-attention kernel) and once with "eager" (two matmuls and
a softmax), at each T; two head shapes: 8 heads of 32 (the LoRA row of bench/lm_throughput.py) and 16 heads
of 64 with 4 key/value heads (Llama-3.2-1B's head size, grouped-query). Median step time over --rounds
interleaved rounds of --steps steps. Writes bench/results/attention_kernels.json.

    nice -n 5 .venv/bin/python bench/attention_kernels.py
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.models.hf_attention import EAGER_MAX_TOKENS  # noqa: E402
from bench.results import write_result  # noqa: E402

TOKENS = 2048
LENGTHS = [64, 128, 192, 256, 384, 512, 1024]
HEADS = {  # name: (hidden, heads, key/value heads)
    "8x32": (256, 8, 8),
    "16x64-gqa4": (1024, 16, 4),
}


def layer(hidden: int, heads: int, kv_heads: int, seq: int):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=64,
        vocab_size=256,
        max_position_embeddings=seq,
    )
    return LlamaModel(config).train()


def step_seconds(model, ids: torch.Tensor, implementation: str, steps: int) -> list[float]:
    model.set_attn_implementation(implementation)
    seconds = []
    for i in range(steps + 1):  # the first is a warm-up
        started = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16):
            out = model(input_ids=ids).last_hidden_state
        out.float().square().mean().backward()
        if i:
            seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    from transformers.utils import logging

    logging.set_verbosity_error()
    figures: dict[str, dict] = {}
    for name, (hidden, heads, kv_heads) in HEADS.items():
        for seq in LENGTHS:
            model = layer(hidden, heads, kv_heads, seq)
            ids = torch.randint(0, 256, (TOKENS // seq, seq), generator=torch.Generator().manual_seed(0))
            times: dict[str, list[float]] = {"sdpa": [], "eager": []}
            for _ in range(args.rounds):
                for implementation in times:
                    times[implementation] += step_seconds(model, ids, implementation, args.steps)
            sdpa, eager = (statistics.median(times[k]) for k in ("sdpa", "eager"))
            figures.setdefault(name, {})[str(seq)] = {
                "sdpa_ms": 1e3 * sdpa,
                "eager_ms": 1e3 * eager,
                "eager_speedup": sdpa / eager,
                "auto_picks": "eager" if seq <= EAGER_MAX_TOKENS else "sdpa",
            }
            print(
                f"heads {name:11} T {seq:5d}: sdpa {1e3 * sdpa:7.1f} ms  eager {1e3 * eager:7.1f} ms  "
                f"eager {sdpa / eager:4.2f}x  (auto: {figures[name][str(seq)]['auto_picks']})",
                flush=True,
            )
    write_result(
        "attention_kernels",
        {"tokens_per_batch": TOKENS, "eager_max_tokens": EAGER_MAX_TOKENS, "by_heads": figures},
        {
            "training_precision": "bf16 autocast, forward and backward of one Llama layer",
            "evaluation_precision": "none (timing only)",
            "selection": "none: the crossover is read off these rows",
            "seeds": [0],
            "deviations": ["timings on a shared 2-core machine: the ratio is what counts"],
        },
    )


if __name__ == "__main__":
    main()
