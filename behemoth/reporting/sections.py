"""One builder per report section: artifacts in, a `Section` of plain blocks out (None: nothing to show).

Blocks are dicts the template knows how to draw: cards, heading, text, table, image (PNG bytes,
inlined as base64), pre and frame (an HTML page shown in an iframe). A stage that did not run leaves
no files, its builder returns None and the section is omitted rather than drawn empty.
"""

import base64
from dataclasses import dataclass, field
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
