"""Render the README's benchmark tables from bench/results/*.json, so the text cannot drift from the files.

Each table sits in README.md between `<!-- bench-table:NAME -->` and `<!-- /bench-table:NAME -->`. A row whose
result file was carried over from the old README (not re-measured under the #19 protocol) is marked with a
dagger, a run with reduced settings with a double dagger, each with a footnote under the table.

    python bench/tables.py            # print the tables
    python bench/tables.py --check    # exit 1 when README.md differs from what the files render
    python bench/tables.py --write    # rewrite the tables in README.md
"""

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from behemoth.files import atomic_write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
CARRIED = "carried over"  # the start of results.CARRIED_OVER
DAGGER, DOUBLE = "†", "‡"

Result = dict[str, Any]


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
    rows = r["figures"]["rows"]

    def cell(name: str) -> str:
        row = rows[name]
        ratio, bound = row["vs_transformers_fp32"], row["fraction_of_bound"]
        return f"{row['tokens_per_s']:.1f} tok/s ({ratio:.2f}x, {bound:.0%})"

    return (
        f"int8 **{cell('behemoth int8')}**, int4 g128 **{cell('behemoth int4 g128')}**; "
        f"transformers fp32 {rows['transformers fp32']['tokens_per_s']:.1f} tok/s "
        "(x: vs transformers fp32; %: of the copy-bandwidth bound)"
    )


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
        f"LeNet-300-100 **{num(a['ratio'])}x** at {num(a['error_percent'], '.2f')}% error; "
        f"LeNet-5 **{num(b['ratio'])}x** at {num(b['error_percent'], '.2f')}%"
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
    return (
        f"GPT vs nanoGPT (fp32): behemoth bf16 **{gpt['speedup']:.2f}x**{same}; {losses} vs "
        f"{median(gpt['nanogpt_val_loss']):.3f} after {f['steps']} steps; LoRA vs Trainer + peft "
        f"**{lora['speedup']:.2f}x**"
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
        return f"{fedavg_cell(rows[key])} vs {rows[key]['paper']}"

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
    ours = " / ".join(f"{100 * median(row['acc']):.1f}%" for row in rows.values())
    theirs = " / ".join(f"{100 * row['opacus_acc']:.1f}" for row in rows.values())
    return f"{ours} (Opacus: {theirs})"


# (result file, script cell, what, render, target)
MAIN: list[tuple[str, str, str, Callable[[Result], str], str]] = [
    (
        "time_to_accuracy",
        "`time_to_accuracy.py`",
        "wall time to 99% MNIST test accuracy (fp32 evaluation), vs pytorch/examples' MNIST script",
        time_to_accuracy,
        "≥ 10x",
    ),
    (
        "loop_overhead",
        "`loop_overhead.py`",
        "behemoth's train step vs a hand-written loop (200 steps, bf16)",
        loop_overhead,
        "≤ 1.03",
    ),
    (
        "augment-all",
        "`augment.py --ops all`",
        "flip, affine, blur, brightness, contrast, erasing, mixup, cutmix per sample, vs kornia",
        augment,
        "≥ 3x",
    ),
    ("augment-geometry", "`augment.py`", "geometry and blur only", augment, "(≥ 3x)"),
    (
        "shards",
        "`shards.py`",
        "MNIST as zstd shards: ratio; stream vs memory (decoded float batches / "
        "training feed; decoded with the files evicted from the page cache)",
        shards,
        "≥ 50%",
    ),
    (
        "quant_latency",
        "`quant_latency.py`",
        "int8 (torch.ao x86 kernels) vs fp32 at batch 256",
        quant_latency,
        "≥ 2x, ≤ 0.3",
    ),
    (
        "generate",
        "`generate.py`",
        "GPT-2-small-shaped decode at batch 1, greedy, 128 tokens: weight-only int8/int4 "
        "vs transformers' generate",
        generate,
        "≥ 4x, ≥ 5x",
    ),
    (
        "generate_llama",
        "`generate.py --model llama-1b`",
        "TinyLlama-1.1B-shaped decode (HF Llama, random weights) at batch 1, greedy, 32 tokens: behemoth's "
        "HF path with weight-only int8/int4 vs transformers' generate",
        generate,
        "≥ 4x, ≥ 5x",
    ),
    (
        "lm_perplexity",
        "`lm_perplexity.py`",
        "validation perplexity of the trained gpt-text GPT packed to weight-only int8 / int4, vs fp32",
        lm_perplexity,
        "≤ +1%, ≤ +5%",
    ),
    (
        "deep_compression",
        "`deep_compression.py`",
        "Han et al. 2016, Table 1",
        deep_compression,
        "≥ 50x, ≥ 45x",
    ),
    ("distill", "`distill.py`", "Hinton et al. 2015, MNIST test errors", distill, "≤ 74"),
    (
        "explain",
        "`explain.py`",
        "IG attributions/s at < 1% completeness error, vs Captum's defaults",
        explain,
        "",
    ),
    (
        "memory",
        "`memory.py`",
        "peak training RSS per parameter (whole run: building + first steps; steady step)",
        memory,
        "≤ 8",
    ),
    (
        "memory-finetune",
        "`memory_finetune.py`",
        "QLoRA step (seq 128, batch 1, r 8) on random Llama-shaped models: whole-run peak RSS per parameter",
        memory_finetune,
        "≤ 0.8 (NF4), ≤ 1.4 (int8)",
    ),
    (
        "lm_throughput",
        "`lm_throughput.py`",
        "training tokens/s: gpt-text GPT vs karpathy/nanoGPT's train.py; LoRA vs transformers' Trainer",
        lm_throughput,
        "≥ 1.5x, ≥ 1.2x",
    ),
    ("memory-quick", "`memory.py --quick`", "the same at small sizes, under the #19 protocol", memory, "≤ 8"),
    ("scaling", "`scaling.py --cpu-only`", "GPT samples/s, 1 vs 2 processes (gloo)", scaling, ""),
    (
        "fedavg",
        "`fedavg.py`",
        "McMahan et al. 2017, rounds to target (100 clients, C = 0.1)",
        fedavg,
        "≤ paper",
    ),
    (
        "dp_mnist",
        "`dp_mnist.py`",
        "DP-SGD accuracy at epsilon 1.2 / 2.9 / 6.9, vs the Opacus example",
        dp_mnist,
        "",
    ),
]


def load(name: str, results: Path) -> Result:
    return json.loads((results / f"{name}.json").read_text())


def marks(r: Result) -> str:
    return (DAGGER if r["provenance"].startswith(CARRIED) else "") + (DOUBLE if r.get("reduced") else "")


def notes(r: Result) -> str:
    """The row's protocol notes: how it departs from the paper or from a like-for-like comparison."""
    notes = list(r["protocol"].get("deviations", []))
    load = r.get("load_average_1m_at_end")
    if load is not None and load > r["cores"]:  # timings under contention: say so beside the row
        notes.append(f"shared machine: load {load:g} on {r['cores']} cores when it ended")
    return "; ".join(notes)


def footnotes(results: list[Result]) -> list[str]:
    lines = []
    if any(r["provenance"].startswith(CARRIED) for r in results):
        lines.append(
            f"{DAGGER} carried over from the earlier README: not re-measured under the #19 protocol."
        )
    for r in results:
        if r.get("reduced"):
            lines.append(f"{DOUBLE} `{r['bench']}`: reduced run ({r['reduced']}).")
    return lines


def main_table(results: Path) -> str:
    lines = ["| script | what | measured | target | protocol notes |", "|---|---|---|---|---|"]
    used = []
    for name, script, what, render, target in MAIN:
        r = load(name, results)
        used.append(r)
        lines.append(f"| {script} | {what} | {marks(r)}{render(r)} | {target} | {notes(r)} |")
    return "\n".join(lines + [""] + footnotes(used))


FED_ROWS = {  # result key: (row, partition, E, B)
    "cnn-fedavg:iid": ("CNN FedAvg", "IID", 5, "10"),
    "cnn-fedavg:shards": ("CNN FedAvg", "non-IID", 5, "10"),
    "cnn-fedsgd:iid": ("CNN FedSGD", "IID", 1, "∞"),
    "cnn-fedsgd:shards": ("CNN FedSGD", "non-IID", 1, "∞"),
    "2nn-fedavg:iid": ("2NN FedAvg", "IID", 1, "10"),
    "2nn-fedavg:shards": ("2NN FedAvg", "non-IID", 1, "10"),
}


def fedavg_table(results: Path) -> str:
    r = load("fedavg", results)
    lines = [
        "| row | partition | E | B | lr | rounds (ours) | seeds | rounds (paper) | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, (row, partition, epochs, batch) in FED_ROWS.items():
        fig = r["figures"]["rows"][key]
        rounds, seeds = fig["rounds"], ", ".join(str(s) for s in fig["seeds"])
        each = f": {', '.join(str(v) for v in fig['per_seed'])}" if len(fig.get("per_seed", [])) > 1 else ""
        lines.append(
            f"| {row} | {partition} | {epochs} | {batch} | {fig['lr']:g} | {marks(r)}**{fedavg_cell(fig)}** "
            f"| {seeds}{each} | {fig['paper']} | {fig.get('note', '')} |"
            if rounds is not None
            else f"| {row} | {partition} | {epochs} | {batch} | {fig['lr']:g} | {marks(r)}{fedavg_cell(fig)} "
            f"| {seeds}{each} | {fig['paper']} | {fig.get('note', '')} |"
        )
    return "\n".join(lines + [""] + footnotes([r]))


def dp_table(results: Path) -> str:
    r = load("dp_mnist", results)
    lines = [
        "| row | ours: ε, test accuracy | seeds | Opacus example: ε, test accuracy |",
        "|---|---|---|---|",
    ]
    for name, row in r["figures"]["rows"].items():
        lines.append(
            f"| {name} ({row['epochs']} epochs, σ {row['sigma']:g}) | {marks(r)}{row['epsilon']:.2f}, "
            f"**{percent(row['acc'], '.2f')}%** | {', '.join(str(s) for s in row['seeds'])} | "
            f"{row['opacus_epsilon']:.2f}, {100 * row['opacus_acc']:.2f}% |"
        )
    return "\n".join(lines + [""] + footnotes([r]))


TABLES: dict[str, Callable[[Path], str]] = {"main": main_table, "federated": fedavg_table, "dp": dp_table}


def render_all(results: Path = RESULTS) -> dict[str, str]:
    return {name: render(results) for name, render in TABLES.items()}


def block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- bench-table:{name} -->\n)(.*?)(<!-- /bench-table:{name} -->)", re.S)


def readme_tables(text: str) -> dict[str, str]:
    """The tables README.md holds now, by name (missing markers: no entry)."""
    found = {}
    for name in TABLES:
        match = block(name).search(text)
        if match:
            found[name] = match.group(2).rstrip("\n")
    return found


def with_tables(text: str, tables: dict[str, str]) -> str:
    for name, table in tables.items():
        pattern = block(name)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- bench-table:{name} --> ... <!-- /bench-table:{name} -->")
        text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(3), text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the tables in README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md's tables differ")
    args = parser.parse_args()
    tables = render_all()
    text = README.read_text()
    if args.write:
        atomic_write_text(README, with_tables(text, tables))
        print(f"wrote {len(tables)} tables into {README.name}")
    elif args.check:
        stale = [name for name, table in tables.items() if readme_tables(text).get(name) != table]
        if stale:
            print(f"README.md tables out of date: {', '.join(stale)} (run python bench/tables.py --write)")
            sys.exit(1)
        print("README.md tables match bench/results")
    else:
        for name, table in tables.items():
            print(f"<!-- bench-table:{name} -->\n{table}\n<!-- /bench-table:{name} -->\n")


if __name__ == "__main__":
    main()
