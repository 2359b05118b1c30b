"""Where a batch-1 decode token's time goes, and which CPU matmul kernel is fastest at M = 1.

1. Kernels: one token's matmuls of a GPT-2-small shape (12 x (qkv 2304x768, proj 768x768, fc 3072x768,
   proj 768x3072) + head 50257x768), each weight its own tensor so the set (124 MB at int8) does not stay in
   cache, timed as a whole (median over interleaved rounds), for
   - fp32 / bf16 `F.linear`,
   - `_weight_int8pack_mm` (bf16 activations, int8 weights: what Int8WeightOnlyLinear runs),
   - `_weight_int4pack_mm_for_cpu` (group 128: Int4WeightOnlyLinear),
   - `torch._int_mm` with the activations quantized to int8 per token (W8A8: not weight-only, its numbers
     differ: shown to see how far a VNNI int8 kernel would go),
   - int8 weights as two int4 planes (w = 16 hi + lo, one int4 call over 2N rows: the same bytes as int8,
     exact, run by the int4 kernel).
2. Whole tokens: torch.profiler over behemoth's int8 / int4 GPT decode: the matmul kernels' share of the
   token's time against everything else (attention, layer norm, GELU, casts, cache writes, Python).

Run: nice -n 5 .venv/bin/python bench/decode_kernels.py [--threads 1] [--rounds 5] [--tokens 32]
Prints only (the decode speeds themselves are bench/generate.py's).
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.compression.weight_only import quantize_weight_only  # noqa: E402
from behemoth.models.gpt import GPT, GPTOptions  # noqa: E402
from behemoth.models.sampling import sample_cached  # noqa: E402

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50272, 768)]  # (N, K), head padded


def int8_as_int4_planes(q: torch.Tensor, scales: torch.Tensor, group: int = 128):
    """(N, K) int8 codes and (N,) scales as the int4 kernel's operands over 2N rows: q = 16 hi + lo with hi in
    [-8, 7] (code hi + 8, scale 16 s, zero 0) and lo in [0, 15] (code lo, scale s, zero 8 s)."""
    N, K = q.shape
    hi = torch.div(q.int(), 16, rounding_mode="floor")
    codes = torch.cat([hi + 8, q.int() - 16 * hi]).contiguous()  # (2N, K) in [0, 15]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    s = scales.float()
    sz = torch.stack([torch.cat([16 * s, s]), torch.cat([torch.zeros(N), 8 * s])], dim=-1)  # (2N, 2)
    return packed, sz.to(torch.bfloat16).unsqueeze(0).expand(K // group, 2 * N, 2).contiguous()


def kernel_sets() -> dict[str, Callable[[], None]]:
    """name -> a function running one token's matmuls with that kernel."""
    g = torch.Generator().manual_seed(0)
    xs = {K: torch.randn(1, K, generator=g) for K in (768, 3072)}
    xb = {K: x.to(torch.bfloat16) for K, x in xs.items()}
    q8 = [torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g) for N, K in SHAPES]
    s8 = [(torch.rand(N, generator=g) / 100).to(torch.bfloat16) for N, _ in SHAPES]
    i4 = [
        (
            torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                torch.randint(0, 16, (N, K), dtype=torch.int32, generator=g), 1
            ),
            torch.rand(K // 128, N, 2, generator=g).to(torch.bfloat16),
        )
        for N, K in SHAPES
    ]
    planes = [int8_as_int4_planes(q, s) for q, s in zip(q8, s8)]
    fp32 = [torch.randn(N, K, generator=g) for N, K in SHAPES]

    def linear(weights: list[torch.Tensor], x: dict) -> Callable[[], None]:
        def run() -> None:
            for w in weights:
                F.linear(x[w.size(1)], w)

        return run

    def int8pack() -> None:
        for q, s in zip(q8, s8):
            torch.ops.aten._weight_int8pack_mm(xb[q.size(1)], q, s)

    def int4pack() -> None:
        for (packed, sz), (_, K) in zip(i4, SHAPES):
            torch.ops.aten._weight_int4pack_mm_for_cpu(xb[K], packed, 128, sz)

    def w8a8() -> None:
        for q, s in zip(q8, s8):
            x = xs[q.size(1)]
            sx = x.abs().amax(dim=-1, keepdim=True) / 127  # (1, 1): per-token symmetric
            a = torch.round(x / sx).to(torch.int8)
            torch._int_mm(a, q.t()).float() * (sx * s.float())

    def two_planes() -> None:
        for (packed, sz), q in zip(planes, q8):
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb[q.size(1)], packed, 128, sz)
            y[:, : q.size(0)] + y[:, q.size(0) :]

    sets = {
        "fp32 F.linear": linear(fp32, xs),
        "int8 _weight_int8pack_mm": int8pack,
        "int4 _weight_int4pack_mm": int4pack,
        "W8A8 torch._int_mm": w8a8,
        "int8 as 2 int4 planes": two_planes,
    }
    sets["bf16 F.linear"] = linear([w.to(torch.bfloat16) for w in fp32], xb)
    return sets


def time_kernels(rounds: int) -> None:
    sets = kernel_sets()
    times: dict[str, list[float]] = {name: [] for name in sets}
    for round_index in range(rounds + 1):
        for name, run in sets.items():
            start = time.perf_counter()
            run()
            if round_index:
                times[name].append(time.perf_counter() - start)
    ref = statistics.median(times["int8 _weight_int8pack_mm"])
    print("one GPT-2-small token's matmuls, M = 1 (ms; x: int8pack's time / this one's)")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"  {name:<28}{ms * 1e3:8.1f} ms  {ref / ms:5.2f}x")


def profile_tokens(tokens: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    opts = GPTOptions(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0)
    fp32 = GPT(50257, opts).eval()
    prompt = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(1))
    kernels = {8: "aten::_weight_int8pack_mm", 4: "aten::_weight_int4pack_mm_for_cpu"}
    for bits, kernel in kernels.items():
        model = quantize_weight_only(fp32, bits, 128, head=True)
        with torch.inference_mode():
            sample_cached(model, prompt, 4, temperature=0)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                sample_cached(model, prompt, tokens, temperature=0)
                wall = time.perf_counter() - start
        events = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
        mm = events.get(kernel, 0.0)
        top = sorted(((v, k) for k, v in events.items() if k != kernel), reverse=True)[:5]
        others = ", ".join(f"{k.removeprefix('aten::')} {v / tokens * 1e3:.2f}" for v, k in top)
        print(
            f"int{bits} decode: {wall / tokens * 1e3:.1f} ms/token (profiled), matmul kernel "
            f"{mm / tokens * 1e3:.1f} ms ({mm / wall:.0%}); next ops, ms/token: {others}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=32, help="tokens decoded under the profiler")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    time_kernels(args.rounds)
    profile_tokens(args.tokens)
    print("reproduce: nice -n 5 .venv/bin/python bench/decode_kernels.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
