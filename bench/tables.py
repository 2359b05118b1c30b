"""Render the README's benchmark tables from bench/results/*.json, so the text cannot drift from the files.

Each table sits in README.md between `<!-- bench-table:NAME -->` and `<!-- /bench-table:NAME -->`. A row whose
result file was carried over from the old README (not re-measured under the #19 protocol) is marked with a
dagger, a run with reduced settings with a double dagger, each with a footnote under the table. How each
result file reads as a cell is bench/table_cells.py.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from behemoth.files import atomic_write_text  # noqa: E402
from bench.results import is_carried_over  # noqa: E402
from bench.table_cells import (  # noqa: E402
    DAGGER,
    Result,
    augment,
    deep_compression,
    distill,
    dp_mnist,
    explain,
    fedavg,
    fedavg_cell,
    generate,
    lm_perplexity,
    lm_throughput,
    loop_overhead,
    memory,
    memory_finetune,
    percent,
    quant_latency,
    row_mark,
    scaling,
    shards,
    time_to_accuracy,
)

RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
DOUBLE = "‡"


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
        "(compiled step and eager) vs transformers' generate (eager, as it ships)",
        generate,
        "≥ 4x, ≥ 5x, ≥ 50%",
    ),
    (
        "generate_llama",
        "`generate.py --model llama-1b`",
        "TinyLlama-1.1B-shaped decode (HF Llama, random weights) at batch 1, greedy, 32 tokens: behemoth's "
        "HF path with weight-only int8/int4 (compiled step and eager) vs transformers' generate",
        generate,
        "≥ 4x, ≥ 5x, ≥ 50%",
    ),
    (
        "generate_avx2",
        "`generate.py` (AVX2)",
        "the GPT-2-small row on a 2-core AMD EPYC without AVX-512 (AVX2 + FMA): behemoth's AVX2 int4 and "
        "int8 kernels, and torch's on the same codes",
        generate,
        "≥ 4x, ≥ 5x, ≥ 50%",
    ),
    (
        "generate_llama_avx2",
        "`generate.py --model llama-1b` (AVX2)",
        "the Llama-1B row on the same AVX2 EPYC",
        generate,
        "≥ 4x, ≥ 5x, ≥ 50%",
    ),
    (
        "lm_perplexity",
        "`lm_perplexity.py`",
        "validation perplexity of the trained gpt-text GPT packed to weight-only int8 / int4, vs fp32",
        lm_perplexity,
        "≤ +1%, ≤ +5%",
    ),
    (
        "lm_perplexity_avx2",
        "`lm_perplexity.py` (AVX2)",
        "the same on the AVX2 EPYC, on behemoth's AVX2 kernels (x rounded to int16 for int8 weights, to int8 "
        "for int4); the GPT trained in fp32 there",
        lm_perplexity,
        "≤ +1%, ≤ +5%",
    ),
    (
        "deep_compression",
        "`deep_compression.py`",
        "Han et al. 2016, Table 1",
        deep_compression,
        "≥ 50x at ≤ 1.58% error, ≥ 45x at ≤ 0.74%",
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


def marks(r: Result, row: dict | None = None) -> str:
    """The result's (or one of its rows') dagger and double dagger."""
    carried = DAGGER if is_carried_over(r) else row_mark(r, row or {})
    return carried + (DOUBLE if r.get("reduced") else "")


def notes(r: Result) -> str:
    """The row's protocol notes: how it departs from the paper or from a like-for-like comparison."""
    notes = list(r["protocol"].get("deviations", []))
    load = r.get("load_average_1m_at_end")
    if load is not None and load > r["cores"]:  # timings under contention: say so beside the row
        notes.append(f"shared machine: load {load:g} on {r['cores']} cores when it ended")
    return "; ".join(notes)


def rows(r: Result) -> list[dict]:
    """A result's table rows, where its figures have them."""
    table = r["figures"].get("rows", {})
    return [row for row in table.values() if isinstance(row, dict)] if isinstance(table, dict) else []


def footnotes(results: list[Result]) -> list[str]:
    lines = []
    if any(is_carried_over(r) or any(row_mark(r, row) for row in rows(r)) for r in results):
        lines.append(
            f"{DAGGER} carried over from the earlier README: not re-measured under the #19 protocol."
        )
    for r in results:
        if r.get("reduced"):
            lines.append(f"{DOUBLE} `{r['bench']}`: reduced run ({r['reduced']}).")
    return lines


def with_footnotes(lines: list[str], results: list[Result]) -> str:
    """The table's lines, then its footnotes after a blank line (none when nothing needs one)."""
    notes = footnotes(results)
    return "\n".join(lines + ([""] + notes if notes else []))


def main_table(results: Path) -> str:
    lines = ["| script | what | measured | target | protocol notes |", "|---|---|---|---|---|"]
    used = []
    for name, script, what, render, target in MAIN:
        r = load(name, results)
        used.append(r)
        lines.append(f"| {script} | {what} | {marks(r)}{render(r)} | {target} | {notes(r)} |")
    return with_footnotes(lines, used)


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
        cell = fedavg_cell(fig) if rounds is None else f"**{fedavg_cell(fig)}**"  # bold: reached the target
        lines.append(
            f"| {row} | {partition} | {epochs} | {batch} | {fig['lr']:g} | {marks(r, fig)}{cell} "
            f"| {seeds}{each} | {fig['paper']} | {fig.get('note', '')} |"
        )
    return with_footnotes(lines, [r])


def dp_table(results: Path) -> str:
    r = load("dp_mnist", results)
    lines = [
        "| row | ours: ε, test accuracy | seeds | Opacus example: ε, test accuracy |",
        "|---|---|---|---|",
    ]
    for name, row in r["figures"]["rows"].items():
        lines.append(
            f"| {name} ({row['epochs']} epochs, σ {row['sigma']:g}) | {marks(r, row)}{row['epsilon']:.2f}, "
            f"**{percent(row['acc'], '.2f')}%** | {', '.join(str(s) for s in row['seeds'])} | "
            f"{row['opacus_epsilon']:.2f}, {100 * row['opacus_acc']:.2f}% |"
        )
    return with_footnotes(lines, [r])


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
