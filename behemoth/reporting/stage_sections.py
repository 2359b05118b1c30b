"""Report sections for the later stages (compression, explanations, federated), built from the files those
stages left in the run; the page's order is BUILDERS at the end."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from behemoth.reporting import figures
from behemoth.reporting.artifacts import RunArtifacts
from behemoth.reporting.sections import (
    Section,
    configuration,
    data,
    evaluation,
    fmt,
    image,
    overview,
    table,
    training,
)

FIDELITY_ROWS = (
    ("completeness_error", "completeness error (IG/SHAP: ≈ 0)"),
    ("deletion_auc", "deletion AUC (lower is better)"),
    ("insertion_auc", "insertion AUC (higher is better)"),
    ("infidelity", "infidelity (lower is better)"),
    ("randomization_spearman", "randomization Spearman ρ (low: depends on the weights)"),
    ("compression_spearman", "Spearman ρ with the uncompressed model (1: same ranking)"),
)


def generation_blocks(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A language model's generation explained (`behemoth explain RUN --prompt ...`): the prompt, what was
    generated, IG's completeness, and the prompt x generated matrix."""
    blocks: list[dict[str, Any]] = [
        {
            "kind": "heading",
            "text": f"{' and '.join(record['methods'])} — {record['samples']} generated tokens attributed "
            f"to {len(record['prompt_tokens'])} prompt tokens",
        },
        {
            "kind": "text",
            "text": f"Prompt {record['prompt']!r}, greedy continuation {record['generated_text']!r}. "
            f"Target: {record['target']}. Baseline: {record['baseline']}.",
        },
    ]
    missed = record.get("completeness_misses")
    if record.get("ig_completeness_max") is not None:
        warn = (
            f" Warning: {missed['count']} generated tokens stayed above the {missed['tolerance']:.0%} "
            f"tolerance at {missed['max_steps']} IG steps (tokens {missed['samples']}): their rows do not "
            "add up to the change in log-probability."
            if missed and missed["count"]
            else ""
        )
        blocks.append(
            {
                "kind": "text",
                "text": f"IG completeness error (|Σ row − Δ log p| / |Δ log p|) at most "
                f"{record['ig_completeness_max']:.2%}.{warn}",
            }
        )
    path = Path(record["picture_path"])
    if path.is_file():
        blocks.append({"kind": "frame", "html": path.read_text(), "alt": "generated-token attributions"})
    else:
        blocks.append({"kind": "text", "text": f"picture missing: {path}"})
    return blocks


def explanations(art: RunArtifacts) -> Section | None:
    if not art.explanations:
        return None
    generated = [r for r in art.explanations if r.get("kind") == "generation"]
    records = [r for r in art.explanations if r.get("kind") != "generation"]
    blocks: list[dict[str, Any]] = [
        {
            "kind": "text",
            "text": "Attributions from Captum; red raises the target "
            "score, blue lowers it. Each method's fidelity figures (means over its samples) "
            "say how far to trust its picture.",
        }
    ]
    for record in generated:
        blocks += generation_blocks(record)
    if not records:
        return Section("explain", "Explanations", blocks)
    methods = [
        r["method"] + (" (compressed)" if r.get("model", "").endswith(".bhm") else "") for r in records
    ]
    header = ["figure", *methods]
    rows = []
    for key, label in FIDELITY_ROWS:
        values = [(r["fidelity"]["summary"].get(key) or {}).get("mean") for r in records]
        if any(v is not None for v in values):
            rows.append([label, *(fmt(v) for v in values)])
    rows.append(["attributions per second", *(fmt(r.get("attributions_per_second")) for r in records)])
    blocks.append(table(header, rows))
    for record in records:
        path = Path(record["picture_path"])
        of = f" of {Path(record['model']).name}" if record.get("model", "").endswith(".bhm") else ""
        blocks.append(
            {
                "kind": "heading",
                "text": f"{record['method']}{of} — {record['samples']} {record['split']} "
                f"samples, target: {record['target']}",
            }
        )
        missed = record.get("completeness_misses")
        if missed and missed["count"]:
            blocks.append(
                {
                    "kind": "text",
                    "text": (
                        f"Warning: {missed['count']} of {record['samples']} samples stayed above the "
                        f"{missed['tolerance']:.0%} completeness tolerance at {missed['max_steps']} IG "
                        f"steps (worst {missed['max_error']:.2%}, samples {missed['samples']}): their "
                        "attributions do not add up to the change in the model's output."
                    ),
                }
            )
        if not path.is_file():
            blocks.append({"kind": "text", "text": f"picture missing: {path}"})
        elif path.suffix == ".png":
            blocks.append(
                image(
                    path.read_bytes(),
                    f"baseline: {record.get('baseline', '')}",
                    f"{record['method']} attributions",
                )
            )
        else:
            blocks.append(
                {"kind": "frame", "html": path.read_text(), "alt": f"{record['method']} token attributions"}
            )
    return Section("explain", "Explanations", blocks)


def federated(art: RunArtifacts) -> Section | None:
    fed = art.federated
    if not fed:
        return None
    summary, rounds = fed["summary"] or {}, fed["rounds"]
    last = rounds[-1]
    blocks: list[dict[str, Any]] = [
        {
            "kind": "text",
            "text": f"From {fed['dir']}: the global model on the test "
            "split after each round (round 0: before any training).",
        }
    ]
    blocks.append(
        image(
            figures.federated_rounds(rounds),
            "Federated rounds: global test accuracy and loss; privacy spent or traffic per round.",
            "federated rounds",
        )
    )
    rows = [
        ["strategy", summary.get("strategy", "?")],
        ["clients (per round)", f"{summary.get('clients', '?')} ({summary.get('clients_per_round', '?')})"],
        ["partition", summary.get("partition", "?")],
        ["rounds", fmt(last["round"])],
        ["final test accuracy", fmt(last["test.acc"])],
        ["stopped because", summary.get("stop_reason", "—")],
    ]
    sent = sum(r.get("bytes.sent", 0) for r in rounds) / 2**20
    received = sum(r.get("bytes.received", 0) for r in rounds) / 2**20
    rows.append(["traffic (MiB sent / received)", f"{sent:,.1f} / {received:,.1f}"])
    failed = sum(r.get("clients.failed", 0) for r in rounds)
    rejected = sum(r.get("clients.rejected", 0) for r in rounds)
    rows.append(["client replies failed / rejected", f"{failed} / {rejected}"])
    if last.get("epsilon") is not None:
        rows.append(["privacy (epsilon, delta)", f"({last['epsilon']:.3f}, {last.get('delta', 0):g})"])
    blocks.append(table(["", "value"], rows))
    return Section("federated", "Federated learning", blocks)


def compression(art: RunArtifacts) -> Section | None:
    result = art.compression
    if not result or not result.get("rows"):
        return None
    rows = result["rows"]
    recipe = result.get("recipe") or {}
    steps = ", ".join(
        f"{k} = {recipe[k]}"
        for k in ("structured", "prune", "schedule", "quant", "code")
        if k in recipe and recipe[k] not in (0, 0.0, "none", None)
    )
    blocks: list[dict[str, Any]] = [
        {
            "kind": "text",
            "text": (
                f"`behemoth compress` ({steps or 'packing only'}): every step's model was written as a "
                ".bhm file, loaded back and measured from that file — size is its bytes on disk, "
                "accuracy is the reloaded model's on the test split, latency the median forward time "
                "on this CPU (all steps timed interleaved)."
            ),
        }
    ]
    blocks.append(
        image(
            figures.compression_pareto(rows),
            "Test accuracy against file size and against latency "
            "at batch 256, one point per step; the dashed line is the Pareto front.",
            "compression trade-offs",
        )
    )
    has_latency = all("latency_ms_b1" in r for r in rows)
    header = ["step", "parameters", "nonzeros", "file bytes", "compression ×", "test accuracy", "test error"]
    header += ["ms, batch 1", "ms, batch 256"] if has_latency else []
    lm = all("perplexity" in r for r in rows)  # a language model: its perplexity and decode speed too
    has_decode = lm and all("decode_tokens_per_s" in r for r in rows)
    header += (["test perplexity"] if lm else []) + (["decode tokens/s"] if has_decode else [])
    table_rows = []
    for r in rows:
        cells = [
            r["step"],
            fmt(r["parameters"]),
            fmt(r["nonzeros"]),
            fmt(r["bytes"]),
            f"{r['compression']:.1f}",
            f"{100 * r['acc']:.2f}%",
            f"{100 * r['error']:.2f}%",
        ]
        if has_latency:
            cells += [f"{r['latency_ms_b1']:.3f}", f"{r['latency_ms_b256']:.2f}"]
        cells += [f"{r['perplexity']:.3f}"] if lm else []
        cells += [f"{r['decode_tokens_per_s']:.1f}"] if has_decode else []
        table_rows.append(cells)
    blocks.append(table(header, table_rows))
    layers = result.get("layers") or {}
    if layers:
        blocks.append({"kind": "heading", "text": "Per layer (final model)"})
        blocks.append(
            table(
                ["layer", "weights", "nonzero", "sparsity", "bits"],
                [
                    [
                        name,
                        fmt(info["weights"]),
                        fmt(info["weights"] - info["zeros"]),
                        f"{100 * info['sparsity']:.1f}%",
                        str(info.get("bits", 32)),
                    ]
                    for name, info in layers.items()
                ],
            )
        )
    return Section("compress", "Compression", blocks)


def generations(art: RunArtifacts) -> Section | None:
    """Text sampled from the run and from the runs it grew out of, with one prompt and seed: what each stage
    of a model's life did to what it writes."""
    if not art.generations:
        return None
    records = [r for r in art.generations if isinstance(r, dict) and isinstance(r.get("text"), str)]
    if not records:
        return None
    first = records[0]
    blocks: list[dict[str, Any]] = [
        {
            "kind": "text",
            "text": f"Every stage continues {first.get('prompt')!r} with the same sampler (temperature "
            f"{first.get('temperature')}, top-k {first.get('top_k')}, seed {first.get('seed')}), "
            f"{first.get('max_new_tokens')} new tokens.",
        }
    ]
    for record in records:
        blocks.append({"kind": "heading", "text": f"{record.get('stage')} ({record.get('source')})"})
        blocks.append({"kind": "pre", "text": record["text"]})
    return Section("generations", "Generations", blocks)


# in page order; later stages append their builders here
BUILDERS: list[Callable[[RunArtifacts], Section | None]] = [
    overview,
    configuration,
    data,
    training,
    evaluation,
    compression,
    explanations,
    generations,
    federated,
]
