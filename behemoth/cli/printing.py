"""What the commands print: tables and one-line summaries of what the stage functions returned.

Shared by the commands and by `behemoth demo`, which prints each stage as its own command would.
"""

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from behemoth.config.explain import COMPLETE_METHODS
from behemoth.config.sizes import format_size
from behemoth.runs import RunDir

console = Console(highlight=False, soft_wrap=True)  # one line stays one line (trial and round lines)
TABLE_WIDTH = 110  # when not on a terminal (rich assumes 80, which squeezes the columns)


def print_training(summary: dict) -> None:
    line = (
        f"run {summary['run']}: {summary['steps']} steps in {summary['train_seconds']:.1f}s "
        f"({summary['samples_per_second']:,.0f} samples/s, peak {summary['peak_memory_mb']:.0f} MB)"
    )
    console.print(line)
    if "test" in summary:
        test = summary["test"]
        extra = f" perplexity {test['perplexity']:.2f}" if "perplexity" in test else ""
        console.print(f"test accuracy {test['acc']:.4f} loss {test['loss']:.4f}{extra}")


def print_table(rows: list[dict[str, Any]], name: str) -> None:
    if not console.is_terminal:
        console.width = TABLE_WIDTH
    table = Table(title=f"compression of {name} (size = file bytes on disk; latency = median ms on this CPU)")
    lm = any("perplexity" in row for row in rows)  # a language model: next-token accuracy and perplexity
    quality = ("token acc", "perplexity") if lm else ("test acc", "error")
    speed = ("decode tok/s",) if lm else ()
    for column in ("step", "params", "nonzeros", "bytes", "x", *quality, "ms b=1", "ms b=256", *speed):
        table.add_column(column, justify="left" if column == "step" else "right")
    for row in rows:
        table.add_row(
            row["step"],
            f"{row['parameters']:,}",
            f"{row['nonzeros']:,}",
            f"{row['bytes']:,}",
            f"{row['compression']:.1f}",
            f"{row['acc']:.4f}",
            f"{row.get('perplexity', float('nan')):.3f}" if lm else f"{row['error']:.2%}",
            f"{row['latency_ms_b1']:.3f}" if "latency_ms_b1" in row else "-",
            f"{row['latency_ms_b256']:.2f}" if "latency_ms_b256" in row else "-",
            *([f"{row['decode_tokens_per_s']:.1f}" if "decode_tokens_per_s" in row else "-"] if lm else []),
        )
    console.print(table)


def print_layers(layers: dict[str, dict[str, Any]]) -> None:
    if not layers:
        return
    table = Table(title="per layer")
    for column in ("layer", "weights", "nonzero", "sparsity", "bits"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name, info in layers.items():
        table.add_row(
            name,
            f"{info['weights']:,}",
            f"{info['weights'] - info['zeros']:,}",
            f"{info['sparsity']:.1%}",
            str(info.get("bits", 32)),
        )
    console.print(table)


def print_fidelity(record: dict) -> None:
    summary = record["fidelity"]["summary"]
    table = Table(
        title=f"{record['method']} on {record['samples']} {record['split']} samples "
        f"(target: {record['target']}; {record['attributions_per_second']:.1f} attributions/s)"
    )
    for column in ("figure", "mean", "median", "max", "reads"):
        table.add_column(column)
    reads = {
        "completeness_error": "|Σattr−Δf|/|Δf| (IG: < tol)"
        if record["method"] in COMPLETE_METHODS
        else "no completeness axiom",
        "deletion_auc": "lower is better",
        "insertion_auc": "higher is better",
        "infidelity": "lower is better",
        "randomization_spearman": "low: weights matter",
    }
    if "compression_spearman" in summary:
        reads["compression_spearman"] = "vs uncompressed: 1 = same ranking"
    for key, text in reads.items():  # one row per figure; names shortened to fit 80 columns
        row = summary.get(key)
        if row is None:
            table.add_row(key, "n/a", "", "", "not for tokens" if key == "infidelity" else "off")
            continue
        fmt = (
            (lambda v: "—" if v is None else f"{v:.2%}")
            if key == "completeness_error"
            else (lambda v: "—" if v is None else f"{v:.4g}")
        )
        table.add_row(
            key.replace("randomization_spearman", "random_spearman").replace("compression_", "compressed_"),
            fmt(row["mean"]),
            fmt(row["median"]),
            fmt(row["max"]),
            text,
        )
    console.print(table)
    missed = record.get("completeness_misses")
    if missed and missed["count"]:
        console.print(
            f"warning: {missed['count']} of {record['samples']} samples stayed above the "
            f"{missed['tolerance']:.0%} completeness tolerance at explain.max_steps = {missed['max_steps']} "
            f"(worst {missed['max_error']:.2%}; samples {missed['samples']}): raise explain.max_steps"
        )
    if record["n_steps_used"] is not None:
        steps = record["n_steps_used"]
        console.print(
            f"IG steps used per sample: min {min(steps)}, max {max(steps)} (baseline: {record['baseline']})"
        )
    else:
        console.print(f"baseline: {record['baseline']}")


def print_generation_attributions(record: dict[str, Any]) -> None:
    """The generated text, and per generated token the prompt token each method credits most."""
    if not console.is_terminal:
        console.width = TABLE_WIDTH
    console.print(f"prompt {record['prompt']!r} -> generated {record['generated_text']!r} (greedy)")
    table = Table(title="most attributed prompt token per generated token")
    table.add_column("generated")
    for method in record["methods"]:
        table.add_column(f"top {method}")
    has_ig = "ig" in record["methods"]
    if has_ig:
        table.add_column("IG completeness error", justify="right")
    prompt = record["prompt_tokens"]
    for row in record["rows"]:
        cells = [row["token"]]
        for method in record["methods"]:
            scores = row["scores"][method]
            top = max(range(len(scores)), key=lambda j: abs(scores[j]))
            cells.append(f"{prompt[top]!r} @{top} ({scores[top]:+.3g})")
        if has_ig:
            cells.append(f"{row['ig_completeness_error']:.2%} ({row['ig_steps']} steps)")
        table.add_row(*cells)
    console.print(table)
    missed = record.get("completeness_misses")
    if missed and missed["count"]:
        console.print(
            f"warning: {missed['count']} of {record['samples']} generated tokens stayed above the "
            f"{missed['tolerance']:.0%} completeness tolerance at explain.max_steps = {missed['max_steps']} "
            f"(worst {missed['max_error']:.2%}; tokens {missed['samples']}): raise explain.max_steps"
        )


def print_federated(run_dir: Path) -> None:
    summary = json.loads(RunDir(run_dir).summary.read_text())
    line = (
        f"run {run_dir}: {summary['rounds']} rounds ({summary['stop_reason']}), test accuracy "
        f"{summary['test']['acc']:.4f} loss {summary['test']['loss']:.4f}, {summary['seconds']:.1f}s, "
        f"sent {format_size(summary['bytes_sent'])}, received {format_size(summary['bytes_received'])}"
    )
    if "bytes_full" in summary:  # federate.adapters_only
        line += f" (adapters only; the full weights: {format_size(summary['bytes_full'])})"
    if summary.get("rounds_to_target") is not None:
        line += f"; reached {summary['target_accuracy']:.4f} at round {summary['rounds_to_target']}"
    if "epsilon" in summary:
        line += f"; (epsilon, delta) = ({summary['epsilon']:.3f}, {summary['delta']:g})"
    console.print(line)
