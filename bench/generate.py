"""Decode speed at batch 1 (greedy, KV cache) in fp32, bf16, weight-only int8 and int4, against transformers'
own `generate` on the same weights (fp32, bf16), random weights (speed does not depend on what they learned):
- gpt2-small: behemoth's GPT, 12 x 768, vocabulary 50257 (bench/results/generate.json; generate_avx2.json on
  an AVX2 CPU without AVX-512, and likewise for llama-1b: each CPU kind keeps its own file);
- llama-1b: a TinyLlama-1.1B-shaped Hugging Face LlamaForCausalLM (22 layers, hidden 2048, MLP 5632, 32 heads,
  4 KV heads, vocabulary 32000; bench/results/generate_llama.json), run by behemoth's HF path (its
  `hf_generate`, with compression/weight_only.py's int8 / int4 modules swapped into the HF model). Its
  weights are made in bf16 (2.2 GB) and the fp32 copy (4.4 GB) is converted from them: every row has the
  same numbers.

Rows named "compiled" decode through behemoth's compiled step (models/compiled_decode.py: torch.compile with
inductor, frozen weights, max-autotune; a static cache); transformers' rows are its `generate` as it ships
(eager, dynamic cache). A compiled row's first call compiles: it is the warm-up round, not timed, and is
reported as first_call_seconds. int4 rows run behemoth's int4 kernel (compression/int4_gemv.c) where the CPU
has AVX-512 BF16 or AVX2 + FMA (the result says which build ran, and on which CPU); the rows "int4 g128,
torch's kernel" are the same codes on torch's `_weight_int4pack_mm_for_cpu`, for comparison in the same run.
int8 rows run behemoth's int8 kernel (compression/int8_gemv.c) on AVX2 CPUs without AVX-512, and then the
rows "int8, torch's kernel" are the same codes on `_weight_int8pack_mm`.

Two speeds per row, both medians over interleaved rounds, the way optimum-benchmark splits them: the time to
the first token (TTFT: a generate call for 1 new token, i.e. the prompt's prefill) and the decode speed,
(new tokens - 1) / (time of the full call - TTFT), the per-token rate once the prompt is in the cache; the
end-to-end rate (new tokens / the full call's time) is kept beside them. Ratios and the bound use decode
speed. The memory-bandwidth bound is the issue's yardstick: every matmul weight is read once per decoded
token, so tokens/s ~ copy bandwidth / weight bytes per token; the copy bandwidth (bytes read + written per
second by a large tensor copy) is measured in every round of the same run, between the rows, and its median
is used (this shared machine's figure moved from 29 to 49 GB/s between sessions: a bound taken once, apart
from the rows, is not comparable with them). Reading alone streams
faster than copying, so a row can pass 100% of it. int8 / int4 quantize
the output head too (compress.head = true): with GPT-2's 50257-word vocabulary the tied head is a third of the
weights, and left in fp32 it would dominate the bytes an int4 token reads.

Run: nice -n 10 .venv/bin/python bench/generate.py [--model gpt2-small|llama-1b|both] [--new-tokens 128]
  [--llama-new-tokens 32] [--rounds 3] [--threads 2] [--quick]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.compression.weight_only import weight_only_layers  # noqa: E402
from behemoth.models.sampling import sample_cached  # noqa: E402
from bench.cpu_kind import cpu_kind_suffix, low_bit_kernels  # noqa: E402
from bench.generate_models import gpt2_small, llama_1b  # noqa: E402
from bench.results import RESULTS, write_result  # noqa: E402


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) copying a `megabytes` float32 tensor: STREAM's copy figure."""
    src = torch.randn(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / min(times)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of every matmul weight (read once per decoded token); embeddings read one row, not counted."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        for buffer in ("weight_int8", "weight_int4", "scales", "scales_and_zeros"):
            tensor = getattr(module, buffer, None)
            if isinstance(tensor, torch.Tensor) and name:
                total += tensor.numel() * tensor.element_size()
    return total


def decode(name: str, model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """(1, T) -> (1, T + new_tokens), greedy: transformers' generate, or behemoth's (its own GPT decode or
    its HF path); a "compiled" row through behemoth's compiled decode step."""
    from behemoth.models.hf_generate import hf_generate, is_hf_causal

    compiled = name.endswith(" compiled")

    if name.startswith("transformers"):
        return model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    if is_hf_causal(model):
        return hf_generate(model, prompt, new_tokens, temperature=0, compiled=compiled)
    return sample_cached(model, prompt, new_tokens, temperature=0, compiled=compiled)


def bytes_per_token(name: str, model: torch.nn.Module) -> int:
    if name.startswith("transformers") and hasattr(model, "transformer"):  # GPT2LMHeadModel: tied head
        total = sum(p.numel() * p.element_size() for p in model.parameters() if p.ndim == 2)
        return total - model.transformer.wpe.weight.numel() * model.transformer.wpe.weight.element_size()
    return weight_bytes_per_token(model)


def matmul_only_seconds(model: torch.nn.Module, repeats: int = 5) -> float | None:
    """One token's weight-only matmuls and nothing else (each quantized layer's forward on one bf16 row, in
    the model's order; median of `repeats`): the ceiling the layers' kernels set on decode, with no
    attention, norms, sampling or Python around them. None for a model without such layers."""
    layers = list(weight_only_layers(model).values())
    if not layers:
        return None
    inputs = [torch.randn(1, layer.in_features).to(torch.bfloat16) for layer in layers]
    times = []
    for _ in range(repeats + 1):  # the first warms up
        start = time.perf_counter()
        for layer, x in zip(layers, inputs, strict=True):
            layer(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def timed_rounds(models: dict, prompt: torch.Tensor, new_tokens: int, rounds: int) -> dict:
    """Interleaved rounds (round 0 warms up and compiles): per row, each round's time to the first token and
    full-call time; per round, the copy bandwidth measured between the rows."""
    ttft: dict[str, list[float]] = {name: [] for name in models}
    full: dict[str, list[float]] = {name: [] for name in models}
    first_call: dict[str, float] = {}
    bandwidths: list[float] = []
    eager = [name for name in models if not name.endswith(" compiled")]
    quantized = [name for name in eager if weight_only_layers(models[name])]
    matmul_only: dict[str, list[float]] = {name: [] for name in quantized}  # compiled twins: the same layers
    outputs = {}
    with torch.inference_mode():
        for round_index in range(rounds + 1):
            for name, model in models.items():
                start = time.perf_counter()
                decode(name, model, prompt, 1)
                middle = time.perf_counter()
                outputs[name] = decode(name, model, prompt, new_tokens)
                end = time.perf_counter()
                if round_index:
                    ttft[name].append(middle - start)
                    full[name].append(end - middle)
                else:
                    first_call[name] = end - start
            if round_index:
                bandwidths.append(copy_bandwidth())
                for name, seconds in matmul_only.items():
                    seconds.append(matmul_only_seconds(models[name]))
            print(f"round {round_index}/{rounds} done", flush=True)
    return {
        "ttft": ttft,
        "full": full,
        "first_call": first_call,
        "bandwidths": bandwidths,
        "matmul_only": matmul_only,
        "outputs": outputs,
    }


def measure(label: str, args: argparse.Namespace) -> None:
    """Time every row of one model shape (interleaved rounds, median), print the table, write the result."""
    build, bench = {"gpt2-small": (gpt2_small, "generate"), "llama-1b": (llama_1b, "generate_llama")}[label]
    bench += cpu_kind_suffix()
    new_tokens = args.new_tokens if label == "gpt2-small" else args.llama_new_tokens
    new_tokens = 32 if args.quick else new_tokens
    torch.manual_seed(0)
    models, shape, vocab = build(args.quick)
    prompt = torch.randint(0, vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    timed = timed_rounds(models, prompt, new_tokens, args.rounds)
    bandwidth = statistics.median(timed["bandwidths"])

    def decode_rate(name: str) -> float:  # per round, then the median
        pairs = zip(timed["full"][name], timed["ttft"][name], strict=True)
        return statistics.median((new_tokens - 1) / (full - first) for full, first in pairs)

    outputs = timed["outputs"]
    reference = outputs["behemoth fp32"][0, args.prompt_tokens :]
    rows = {}
    hf_fp32 = decode_rate("transformers fp32") if "transformers fp32" in models else None
    print(
        f"\n{label}: copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write; median of rounds, "
        f"{min(timed['bandwidths']) / 1e9:.1f}-{max(timed['bandwidths']) / 1e9:.1f}), {args.threads} threads"
    )
    head = ("decode tok/s", "TTFT ms", "e2e tok/s", "MB/token", "bound tok/s", "of bound", "vs hf fp32")
    head += ("same",)
    print(f"{'model':<44}" + "".join(f"{h:>13}" for h in head))
    for name, model in models.items():
        rate = decode_rate(name)
        full = statistics.median(timed["full"][name])
        first = statistics.median(timed["ttft"][name])
        per_token = bytes_per_token(name, model)
        bound = bandwidth / per_token
        same = float((outputs[name][0, args.prompt_tokens :] == reference).float().mean())
        rows[name] = {
            "decode_tokens_per_s": rate,
            "time_to_first_token_s": first,
            "end_to_end_tokens_per_s": new_tokens / full,
            "seconds": full,
            "weight_bytes_per_token": per_token,
            "bandwidth_bound_tokens_per_s": bound,
            "fraction_of_bound": rate / bound,
            "vs_transformers_fp32": rate / hf_fp32 if hf_fp32 else None,
            "tokens_equal_to_behemoth_fp32": same,
            "first_call_seconds": timed["first_call"][name],
        }
        twin = name.removesuffix(" compiled")  # a compiled row runs its eager twin's modules
        if twin != name:  # its tokens should follow the twin's until rounding splits a near-tie
            ours, theirs = outputs[name][0, args.prompt_tokens :], outputs[twin][0, args.prompt_tokens :]
            differ = (ours != theirs).nonzero()
            rows[name]["tokens_before_first_difference_from_eager_twin"] = (
                int(differ[0, 0]) if len(differ) else len(ours)
            )
        if twin in timed["matmul_only"]:  # the kernels alone: the most this row's weights allow
            ceiling = 1 / statistics.median(timed["matmul_only"][twin])
            rows[name]["matmul_only_tokens_per_s"] = ceiling
            rows[name]["matmul_only_fraction_of_bound"] = ceiling / bound
        cells = (
            f"{rate:.1f}",
            f"{first * 1e3:.0f}",
            f"{new_tokens / full:.1f}",
            f"{per_token / 1e6:.1f}",
            f"{bound:.1f}",
            f"{rate / bound:.0%}",
            f"{rate / hf_fp32:.2f}x" if hf_fp32 else "-",
            f"{same:.0%}",
        )
        print(f"{name:<44}" + "".join(f"{c:>13}" for c in cells))
        agree = rows[name].get("tokens_before_first_difference_from_eager_twin", new_tokens)
        if agree < new_tokens:  # (random weights leave near-ties; a stale graph would differ at once)
            print(f"  its first {agree} of {new_tokens} tokens are its eager twin's")
        if "matmul_only_tokens_per_s" in rows[name]:
            ceiling = rows[name]["matmul_only_tokens_per_s"]
            alone = f"{'  its matmuls alone':<44}{ceiling:>13.1f}"
            print(alone + " " * 52 + f"{ceiling / bound:>13.0%}")
    del models
    figures = {
        "model": label,
        "shape": shape,
        "vocab": vocab,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": new_tokens,
        "rounds": args.rounds,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "copy_bandwidth_per_round": timed["bandwidths"],
        **low_bit_kernels(),
        "rows": rows,
    }
    deviations = [f"{args.threads} thread(s); median of {args.rounds} rounds"]
    if label == "llama-1b":
        deviations.append(
            f"{new_tokens} new tokens (not 128: an fp32 1B token takes ~0.5 s on one thread); behemoth's "
            "fp32 / bf16 rows are its HF path over transformers' own model, so they match transformers'"
        )
    protocol = {
        "training_precision": "none (random weights: speed only)",
        "evaluation_precision": "each row's own (fp32, bf16, int8 or int4 weights; bf16 compute for low-bit)",
        "selection": "no settings chosen: greedy decoding, the same weights and prompt for every row",
        "speeds": "decode = (new tokens - 1) / (full call - time to first token), per round, median; "
        "time to first token = a 1-token call (prefill); end to end = new tokens / full call",
        "seeds": [0],
        "deviations": deviations,
    }
    if not args.quick:
        write_result(bench, figures, protocol, results_dir=Path(args.out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["gpt2-small", "llama-1b", "both"], default="both")
    parser.add_argument("--new-tokens", type=int, default=128, help="new tokens for gpt2-small")
    parser.add_argument("--llama-new-tokens", type=int, default=32, help="new tokens for llama-1b")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small shapes and 32 tokens (a smoke test)")
    parser.add_argument(
        "--out",
        default=str(RESULTS),
        help="folder for generate.json / generate_llama.json (generate_avx2.json, ... without AVX-512)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for label in ("gpt2-small", "llama-1b") if args.model == "both" else (args.model,):
        measure(label, args)
    print("reproduce: nice -n 10 .venv/bin/python bench/generate.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
