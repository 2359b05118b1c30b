"""How each bench's result file reads as a README table cell: one function per result file (`r` is the
file's JSON), plus the number formats they share. bench/tables.py arranges the cells into the tables."""

from typing import Any

from bench.results import is_carried_over

Result = dict[str, Any]
DAGGER = "†"  # a figure carried over from before the #19 protocol


def row_mark(r: Result, row: dict[str, Any]) -> str:
    """The dagger of a row kept from an earlier file when other rows were re-measured (bench/results.py's
    merge_rows); a wholly carried-over file is marked once, by the table, not per row."""
    return DAGGER if "provenance" in row and is_carried_over(r, row) else ""


def num(figure: Any, fmt: str = ".1f", unit: str = "") -> str:
    """A figure, or a median with its range ("20.5 (18-26)") when it is a spread over seeds or repeats."""
    if isinstance(figure, dict):
        low, high = format(figure["min"], fmt), format(figure["max"], fmt)
        joint = " to " if figure["min"] < 0 else "-"  # "-0.03 to 0.09", never "-0.03-0.09"
        return f"{format(figure['median'], fmt)}{unit} ({low}{joint}{high})"
    return f"{format(figure, fmt)}{unit}"


def median(figure: Any) -> float:
    return figure["median"] if isinstance(figure, dict) else figure


def seeds_text(figure: Any) -> str:
    count = len(figure["values"]) if isinstance(figure, dict) else 1
    return f"median of {count} seeds" if count > 1 else "1 seed"


# ------------------------------------------------------------------------------------- main table rows


def time_to_accuracy(r: Result) -> str:
    f = r["figures"]
    return (
        f"{num(f['behemoth_seconds'])} s vs {num(f['reference_seconds'])} s: **{f['speedup']:.1f}x** "
        f"({seeds_text(f['behemoth_seconds'])})"
    )


def loop_overhead(r: Result) -> str:
    f = r["figures"]
    text = f"**{f['ratio']:.3f}**"
    if "hand_seconds" in f:  # the repeats' range shows how noisy the machine was
        text += (
            f" (repeats: behemoth {num(f['behemoth_seconds'])} s, hand-written {num(f['hand_seconds'])} s)"
        )
    return text


def augment(r: Result) -> str:
    f = r["figures"]
    text = f"{f['behemoth'] / 1e3:.1f}k vs {f['kornia'] / 1e3:.1f}k images/s: "
    text += f"**{f['ratio']:.1f}x**" if f["ratio"] >= 3 else f"{f['ratio']:.1f}x"
    return text + (f" (per-sample loop: {f['loop_ratio']:.0f}x)" if "loop_ratio" in r["figures"] else "")


def shards(r: Result) -> str:
    z = r["figures"]["zstd"]
    text = f"{z['ratio']:.1f}x ({z['vs_float32']:.0f}x vs float32); **{z['decoded_ratio']:.0%}** / "
    text += f"{z['feed_ratio']:.0%}"
    if "cold_ratio" in z:  # the eviction check: a plain read of the evicted files against a cached one
        speeds = z["samples_per_second"]
        cold, warm = speeds["raw read cold"]["median"], speeds["raw read warm"]["median"]
        text += f"; evicted files {z['cold_ratio']:.0%} (plain read {cold:,.0f} vs {warm:,.0f} MB/s cached)"
    return text


def quant_latency(r: Result) -> str:
    f = r["figures"]
    if "mlp_drop_points" in f:  # per seed: speed-ups and drops with their ranges
        return (
            f"MLP **{num(f['mlp_speedup_spread'])}x**, drop {num(f['mlp_drop_points'], '.2f')} points; "
            f"LeNet **{num(f['lenet_speedup_spread'])}x**, drop {num(f['lenet_drop_points'], '.2f')} "
            f"({seeds_text(f['mlp_drop_points'])})"
        )
    return (
        f"MLP **{f['mlp_speedup']:.1f}x**, LeNet **{f['lenet_speedup']:.1f}x**, "
        f"≤ {f['max_drop_points']:.2f} points"
    )


def generate(r: Result) -> str:
    f = r["figures"]
    rows = f["rows"]

    def cell(name: str) -> str:
        row = rows[name]
        ratio, bound = row["vs_transformers_fp32"], row["fraction_of_bound"]
        return f"{row['decode_tokens_per_s']:.1f} tok/s ({ratio:.2f}x, {bound:.0%})"

    compiled = ("behemoth int8 compiled", "behemoth int4 g128 compiled")
    trio = (*compiled, "transformers fp32")
    firsts = " / ".join(f"{rows[name]['time_to_first_token_s'] * 1e3:.0f}" for name in trio)
    ends = " / ".join(f"{rows[name]['end_to_end_tokens_per_s']:.1f}" for name in trio)
    return (
        f"decode, compiled (`--compile`): int8 **{cell(compiled[0])}**, int4 g128 **{cell(compiled[1])}**; "
        f"eager: int8 {cell('behemoth int8')}, int4 g128 {cell('behemoth int4 g128')}; transformers fp32 "
        f"{rows['transformers fp32']['decode_tokens_per_s']:.1f} tok/s (x: vs transformers fp32; %: of the "
        f"copy-bandwidth bound at {f['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s). Compiled int8 / int4 / "
        f"transformers fp32: time to first token {firsts} ms, end to end {ends} tok/s. {int4_kernels(rows)}"
    )


def int4_kernels(rows: dict[str, Any]) -> str:
    """behemoth's low-bit kernels beside torch's on the same codes (rows written before they existed:
    torch's)."""
    ours, theirs = "behemoth int4 g128", "behemoth int4 g128, torch's kernel"
    if theirs not in rows:
        return f"int4's matmuls alone reach {rows[ours]['matmul_only_fraction_of_bound']:.0%} of the bound"
    pairs = [("int8", "behemoth int8", "behemoth int8, torch's kernel"), ("int4", ours, theirs)]
    texts = []
    for bits, ours, theirs in pairs:
        if theirs not in rows:
            continue
        speed = [f"{rows[f'{name} compiled']['decode_tokens_per_s']:.1f}" for name in (theirs, ours)]
        alone = [f"{rows[name]['matmul_only_fraction_of_bound']:.0%}" for name in (theirs, ours)]
        texts.append(
            f"{bits} on torch's kernel instead of behemoth's: compiled {speed[0]} vs {speed[1]} tok/s; "
            f"matmuls alone {alone[0]} vs {alone[1]} of the bound"
        )
    return ". ".join(texts)


def lm_perplexity(r: Result) -> str:
    rows = r["figures"]["rows"]

    def change(name: str) -> str:
        return f"{median(rows[name]['relative_change']):+.2%}"

    return (
        f"int8 **{change('int8 (per channel)')}**, int4 g128 **{change('int4 g128')}** "
        f"(g64 {change('int4 g64')}, g32 {change('int4 g32')}); fp32 validation perplexity "
        f"{median(rows['fp32']['perplexity']):.3f} ({seeds_text(rows['fp32']['perplexity'])})"
    )


def deep_compression(r: Result) -> str:
    a, b = r["figures"]["lenet-300-100"], r["figures"]["lenet5"]
    return (
        f"{row_mark(r, a)}LeNet-300-100 **{num(a['ratio'])}x** at {num(a['error_percent'], '.2f')}% "
        f"error; {row_mark(r, b)}LeNet-5 **{num(b['ratio'])}x** at {num(b['error_percent'], '.2f')}%"
    )


def distill(r: Result) -> str:
    f = r["figures"]
    return (
        f"teacher {num(f['teacher'], 'd')}, student {num(f['student'], 'd')}, "
        f"distilled **{num(f['distilled'], 'd')}** ({seeds_text(f['distilled'])})"
    )


def explain(r: Result) -> str:
    f = r["figures"]
    return f"**{f['ratio_per_sample']:.2f}x** ({f['ratio_batch']:.2f}x vs one batched call)"


def memory(r: Result) -> str:
    f = r["figures"]
    if "runs" not in f:  # carried over: the step-2 (steady) figures only
        return (
            f"GPT {f['params_m'][0]}M-{f['params_m'][1]}M, step 2 only: fp32 AdamW "
            f"{f['plain_steady'][0]}-{f['plain_steady'][1]} B/param; best **{f['best_steady'][0]}-"
            f"{f['best_steady'][1]}**"
        )
    runs = [run for run in f["runs"] if "failed" not in run and run["k"] in f["sizes"]]

    def span(setting: str, key: str) -> str:
        values = [run[key] for run in runs if run["setting"] == setting]
        return f"{min(values):.1f}-{max(values):.1f}"

    params = [run["params"] / 1e6 for run in runs]
    return (
        f"GPT {min(params):.0f}M-{max(params):.0f}M; whole run: fp32 AdamW "
        f"{span('plain', 'whole_bytes_per_param')} B/param, "
        f"best **{span('best', 'whole_bytes_per_param')}**; "
        "steady step: "
        f"{span('plain', 'bytes_per_param')}, best {span('best', 'bytes_per_param')}"
    )


def memory_finetune(r: Result) -> str:
    rows = r["figures"]["rows"]

    def cell(row: dict[str, Any]) -> str:
        base = "NF4" if row["bits"] == 4 else "int8"
        return f"{row['size']} {base} {row['bytes_per_param']:.2f}"

    big = [cell(row) for row in rows if row["size"] == "7B"]
    rest = [cell(row) for row in rows if row["size"] != "7B"]
    return f"**{', '.join(big)}** B/param ({', '.join(rest)})"


def lm_throughput(r: Result) -> str:
    f = r["figures"]
    gpt, lora = f["gpt"], f["lora"]
    same = f", both fp32 **{gpt['speedup_fp32']:.2f}x**" if "speedup_fp32" in gpt else ""
    fp32_loss = gpt.get("behemoth_fp32_val_loss")
    losses = f"val loss {median(gpt['behemoth_val_loss']):.3f}"
    losses += f" / fp32 {median(fp32_loss):.3f}" if fp32_loss else ""
    seeds = r["protocol"].get("seeds")  # files before rounds were seeded: one seed for every round
    over = f" (median of {len(seeds)} seeds)" if seeds and len(seeds) > 1 else " (1 seed)"
    return (
        f"GPT vs nanoGPT (fp32): behemoth bf16 **{gpt['speedup']:.2f}x**{same}; {losses} vs "
        f"{median(gpt['nanogpt_val_loss']):.3f} after {f['steps']} steps{over}; LoRA vs Trainer + peft "
        f"**{lora['speedup']:.2f}x**"
        + (f", both compiled **{f['lora_compiled']['speedup']:.2f}x**" if "lora_compiled" in f else "")
        + (  # how much of the ratio is behemoth's attention choice (files before it have no such column)
            f" (vs Trainer given the same eager attention {lora['speedup_vs_trainer_eager_attention']:.2f}x)"
            if "speedup_vs_trainer_eager_attention" in lora
            else ""
        )
    )


def scaling(r: Result) -> str:
    cpu = r["figures"]["cpu"]
    cases = ("ddp", "fsdp", "pipeline")
    names = {"ddp": "DDP", "fsdp": "FSDP", "pipeline": "pipeline"}
    same = ", ".join(f"{names[case]} {cpu[f'2 x {case}']['vs_same_cores']:.2f}x" for case in cases)
    one = ", ".join(f"{cpu[f'2 x {case}']['vs_one_thread']:.2f}x" for case in cases)
    return f"2 x 1 thread vs 1 x 2 threads (same cores): {same}; vs 1 x 1 thread: {one}"


def fedavg_cell(row: dict[str, Any]) -> str:
    """Rounds to target: the median over seeds (a seed that never got there counts as more than it ran)."""
    rounds = row["rounds"]
    if isinstance(rounds, dict):
        return num(rounds, "g")
    return f"> {row['rounds_run']}" if rounds is None else f"{rounds:g}"


def fedavg(r: Result) -> str:
    rows = r["figures"]["rows"]

    def pair(key: str) -> str:
        return f"{row_mark(r, rows[key])}{fedavg_cell(rows[key])} vs {rows[key]['paper']}"

    return (
        f"FedAvg CNN IID {pair('cnn-fedavg:iid')}; non-IID {pair('cnn-fedavg:shards')}; "
        f"2NN {pair('2nn-fedavg:iid')}, {pair('2nn-fedavg:shards')} ([more](#federated-benchmarks))"
    )


def percent(figure: Any, fmt: str = ".1f") -> str:
    """A fraction as percent, or a spread of fractions as a median percent with its range."""
    if isinstance(figure, dict):
        return num({k: 100 * figure[k] for k in ("median", "min", "max")} | {"values": figure["values"]}, fmt)
    return format(100 * figure, fmt)


def dp_mnist(r: Result) -> str:
    rows = r["figures"]["rows"]
    ours = " / ".join(f"{row_mark(r, row)}{100 * median(row['acc']):.1f}%" for row in rows.values())
    theirs = " / ".join(f"{100 * row['opacus_acc']:.1f}" for row in rows.values())
    return f"{ours} (Opacus: {theirs})"


# (result file, script cell, what, render, target)
