"""One builder per report section: artifacts in, a `Section` of plain blocks out (None: nothing to show).

Blocks are dicts the template knows how to draw: cards, heading, text, table, image (PNG bytes,
inlined as base64), pre and frame (an HTML page shown in an iframe). A stage that did not run leaves
no files, its builder returns None and the section is omitted rather than drawn empty.
"""

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from behemoth.reporting import figures
from behemoth.reporting.artifacts import RunArtifacts
from behemoth.runs import RunDir


@dataclass
class Section:
    id: str
    title: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


def image(png: bytes, caption: str, alt: str) -> dict[str, Any]:
    return {"kind": "image", "data": base64.b64encode(png).decode("ascii"), "caption": caption, "alt": alt}


def table(header: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"kind": "table", "header": header, "rows": rows}


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def class_names(art: RunArtifacts) -> list[str]:
    names = (art.spec or {}).get("class_names") or []
    if not names and art.evaluation and "f1_per_class" in art.evaluation:
        names = [str(i) for i in range(len(art.evaluation["f1_per_class"]))]
    return names


def overview(art: RunArtifacts) -> Section:
    summary, evaluation = art.summary or {}, art.evaluation or {}
    test = summary.get("test") or {}
    cards = [
        ("model", summary.get("model") or art.config.get("model", {}).get("name", "?")),
        ("dataset", summary.get("dataset") or art.config.get("data", {}).get("name", "?")),
    ]
    if "parameters" in summary:
        cards.append(("parameters", fmt(summary["parameters"])))
    accuracy = evaluation.get("acc", test.get("acc"))
    if accuracy is not None:
        cards.append(("test accuracy", f"{100 * accuracy:.2f}%"))
    if "f1_macro" in evaluation:
        cards.append(("test F1 (macro)", f"{evaluation['f1_macro']:.4f}"))
    if "perplexity" in test:
        cards.append(("test perplexity", f"{test['perplexity']:.2f}"))
    if "train_seconds" in summary:
        cards.append(("training time", f"{summary['train_seconds']:.1f} s"))
    return Section("overview", "Overview", [{"kind": "cards", "cards": cards}])


def configuration(art: RunArtifacts) -> Section:
    return Section(
        "config",
        "Configuration",
        [
            {
                "kind": "text",
                "text": "The fully resolved config of the run (config.toml): rerun it with "
                f"`behemoth train {art.run_dir / 'config.toml'} name=...`.",
            },
            {"kind": "pre", "text": art.config_text},
        ],
    )


def data(art: RunArtifacts) -> Section | None:
    described = (art.summary or {}).get("data")
    if not described:
        return None
    blocks: list[dict[str, Any]] = [
        table(["split", "samples"], [[k, fmt(v)] for k, v in described["splits"].items()])
    ]
    blocks.append(
        {
            "kind": "text",
            "text": f"input shape {tuple(described['input_shape'])}, "
            f"{described['num_classes']} classes/tokens, task {described['task']}",
        }
    )
    if described.get("class_counts"):
        names = described.get("class_names") or [str(i) for i in range(described["num_classes"])]
        blocks.append(
            image(
                figures.class_balance(described["class_counts"], names),
                "Share of each class in each split.",
                "class balance",
            )
        )
    data_cfg = art.config.get("data", {})
    sampling, augment = data_cfg.get("sampling") or {}, data_cfg.get("augment") or {}
    ops = {k: v for k, v in augment.items() if isinstance(v, dict)}  # each op is a table; "fill" is not
    used = {}
    if sampling.get("kind", "shuffle") != "shuffle" or sampling.get("size") or sampling.get("fraction"):
        used["sampling"] = sampling
    if ops:
        used["augment"] = augment
    if used:
        blocks.append({"kind": "heading", "text": "Sampling and augmentation"})
        blocks.append({"kind": "pre", "text": "\n".join(f"{k} = {v}" for k, v in used.items())})
    preview = RunDir(art.run_dir).preview
    if preview.is_file():
        caption = (
            "Training samples (top row) and draws of the configured augmentation (rows below)."
            if ops
            else "Training samples as the model sees them (after normalisation)."
        )
        blocks.append(image(preview.read_bytes(), caption, "training samples preview"))
    return Section("data", "Data", blocks)


def training(art: RunArtifacts) -> Section | None:
    summary = art.summary
    if not any(r.get("kind") == "train" for r in art.metrics) and "steps" not in (summary or {}):
        return None  # e.g. a federated run: its rounds have their own section
    blocks: list[dict[str, Any]] = []
    curves = figures.training_curves(art.metrics)
    if curves:
        smoothing = art.config.get("train", {}).get("label_smoothing", 0.0)
        note = (
            f" The training loss includes label smoothing ({smoothing:g}), "
            "so it sits above the validation loss."
            if smoothing
            else ""
        )
        blocks.append(
            image(
                curves,
                "Training loss and accuracy per logged step (train: the current batch; "
                "validation: the whole validation split), and the learning rate." + note,
                "training curves",
            )
        )
    if summary:
        train_cfg = art.config.get("train", {})
        rows = [
            ["optimizer steps", fmt(summary.get("steps"))],
            ["epochs completed", fmt(summary.get("epochs"))],
            ["stopped because", summary.get("stop_reason") or "ran to the end"],
            ["training time (s)", fmt(summary.get("train_seconds"))],
            ["throughput (samples/s)", fmt(summary.get("samples_per_second"))],
            ["peak memory (MB)", fmt(summary.get("peak_memory_mb"))],
            ["precision", train_cfg.get("precision", "fp32")],
            ["processes (world size)", fmt(summary.get("world_size", 1))],
            ["strategy", train_cfg.get("strategy", "auto")],
        ]
        blocks.append(table(["", "value"], rows))
    return Section("training", "Training", blocks)


def evaluation(art: RunArtifacts) -> Section | None:
    ev = art.evaluation
    if not ev:
        return None
    keys = [
        k
        for k in (
            "loss",
            "acc",
            "acc_balanced",
            "precision_macro",
            "recall_macro",
            "f1_macro",
            "perplexity",
            "samples_per_second",
        )
        if k in ev
    ]
    blocks: list[dict[str, Any]] = [
        {
            "kind": "text",
            "text": f"{ev.get('split', 'test')} split, {fmt(ev.get('samples'))} samples "
            "(precision, recall and F1 from torchmetrics; inference throughput in samples/s).",
        },
        table(keys, [[fmt(ev[k]) for k in keys]]),
    ]
    names = ev.get("class_names") or class_names(art)
    if "f1_per_class" in ev:
        blocks.append(
            image(
                figures.per_class_scores(ev, names), "Per-class precision, recall and F1.", "per-class scores"
            )
        )
        blocks.append(
            table(
                ["class", "precision", "recall", "F1"],
                [
                    [name, *(f"{ev[f'{m}_per_class'][i]:.4f}" for m in ("precision", "recall", "f1"))]
                    for i, name in enumerate(names)
                ],
            )
        )
    if "confusion_matrix" in ev:
        blocks.append(
            image(
                figures.confusion_matrix(ev["confusion_matrix"], names),
                "Rows: true class; columns: predicted class.",
                "confusion matrix",
            )
        )
    return Section("evaluation", "Evaluation", blocks)


FIDELITY_ROWS = (
    ("completeness_error", "completeness error (IG/SHAP: ≈ 0)"),
    ("deletion_auc", "deletion AUC (lower is better)"),
    ("insertion_auc", "insertion AUC (higher is better)"),
    ("infidelity", "infidelity (lower is better)"),
    ("randomization_spearman", "randomization Spearman ρ (low: depends on the weights)"),
    ("compression_spearman", "Spearman ρ with the uncompressed model (1: same ranking)"),
)


def explanations(art: RunArtifacts) -> Section | None:
    if not art.explanations:
        return None
    blocks: list[dict[str, Any]] = [
        {
            "kind": "text",
            "text": "Attributions from Captum; red raises the target "
            "score, blue lowers it. Each method's fidelity figures (means over its samples) "
            "say how far to trust its picture.",
        }
    ]
    methods = [
        r["method"] + (" (compressed)" if r.get("model", "").endswith(".bhm") else "")
        for r in art.explanations
    ]
    header = ["figure", *methods]
    rows = []
    for key, label in FIDELITY_ROWS:
        values = [(r["fidelity"]["summary"].get(key) or {}).get("mean") for r in art.explanations]
        if any(v is not None for v in values):
            rows.append([label, *(fmt(v) for v in values)])
    rows.append(
        ["attributions per second", *(fmt(r.get("attributions_per_second")) for r in art.explanations)]
    )
    blocks.append(table(header, rows))
    for record in art.explanations:
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


# in page order; later stages append their builders here
BUILDERS: list[Callable[[RunArtifacts], Section | None]] = [
    overview,
    configuration,
    data,
    training,
    evaluation,
    compression,
    explanations,
    federated,
]
