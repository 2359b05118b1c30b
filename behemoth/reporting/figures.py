"""The report's plots, drawn with matplotlib into PNG bytes (inlined in the page, so it needs no network).

Every figure labels its axes with units and carries a legend where it has more than one series.
"""

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 100


def to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    points = [
        (r["step"], r[key]) for r in records if r.get("kind") == kind and key in r and r[key] is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


def training_curves(records: list[dict[str, Any]]) -> bytes | None:
    """Loss, accuracy and learning rate against the optimizer step (train points and validation points)."""
    train_steps, _ = _series(records, "train", "train.loss")
    if not train_steps:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, name, label in ((axes[0], "loss", "loss (cross-entropy, nats)"), (axes[1], "acc", "accuracy")):
        ax.plot(*_series(records, "train", f"train.{name}"), label="train (batch)", color="C0", alpha=0.8)
        val_steps, val = _series(records, "eval", f"val.{name}")
        if val_steps:
            ax.plot(val_steps, val, "o-", label="validation", color="C3")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("loss")
    axes[1].set_title("accuracy")
    steps, lrs = _series(records, "train", "lr")
    axes[2].plot(steps, lrs, color="C2", label="learning rate")
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylabel("learning rate")
    axes[2].set_title("learning-rate schedule")
    axes[2].grid(alpha=0.3)
    axes[2].legend()
    return to_png(fig)


def confusion_matrix(matrix: list[list[int]], names: list[str]) -> bytes:
    """Counts with row-normalised colour: row = true class, column = predicted class."""
    counts = np.asarray(matrix)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.5, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
    ax.set_yticks(range(len(names)), names)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        str(counts[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (counts; colour: share of the true class)")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of row")
    return to_png(fig)


def per_class_scores(evaluation: dict[str, Any], names: list[str]) -> bytes:
    """Precision, recall and F1 of each class, side by side."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 3.6))
    width = 0.27
    positions = np.arange(len(names))
    for offset, key, colour in ((-width, "precision", "C0"), (0, "recall", "C1"), (width, "f1", "C2")):
        ax.bar(positions + offset, evaluation[f"{key}_per_class"], width, label=key, color=colour)
    low = min(min(evaluation[f"{k}_per_class"]) for k in ("precision", "recall", "f1"))
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_xticks(positions, names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("score (0-1)")
    ax.set_title("per-class precision, recall and F1 (test)")
    ax.legend(ncol=3, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def class_balance(class_counts: dict[str, list[int]], names: list[str]) -> bytes:
    """Samples per class in each split, as a share of the split (so splits of any size compare)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 3.4))
    splits = list(class_counts)
    width = 0.8 / max(len(splits), 1)
    positions = np.arange(len(names))
    for i, split in enumerate(splits):
        counts = np.asarray(class_counts[split], dtype=float)
        ax.bar(
            positions + (i - (len(splits) - 1) / 2) * width,
            100 * counts / max(counts.sum(), 1),
            width,
            label=f"{split} ({int(counts.sum()):,})",
            color=f"C{i}",
        )
    ax.set_xticks(positions, names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("share of split (%)")
    ax.set_title("class balance")
    ax.legend(title="split (samples)")
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def federated_rounds(rounds: list[dict[str, Any]]) -> bytes:
    """Global test accuracy and loss per round, and privacy spent (epsilon) or traffic per round."""
    numbers = [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(numbers, [r["test.acc"] for r in rounds], "o-", color="C0", label="global model, test split")
    axes[0].set_ylabel("test accuracy")
    axes[1].plot(
        numbers, [r["test.loss"] for r in rounds], "o-", color="C3", label="global model, test split"
    )
    axes[1].set_ylabel("test loss (cross-entropy, nats)")
    with_eps = [r for r in rounds if r.get("epsilon") is not None]
    if with_eps:
        axes[2].plot(
            [r["round"] for r in with_eps],
            [r["epsilon"] for r in with_eps],
            "o-",
            color="C4",
            label=f"epsilon (delta = {with_eps[-1].get('delta', 0):g})",
        )
        axes[2].set_ylabel("privacy spent, epsilon")
        axes[2].set_title("differential privacy")
    else:
        traffic = [r for r in rounds if "bytes.sent" in r]
        axes[2].plot(
            [r["round"] for r in traffic],
            [r["bytes.sent"] / 2**20 for r in traffic],
            "o-",
            color="C1",
            label="sent to clients",
        )
        axes[2].plot(
            [r["round"] for r in traffic],
            [r["bytes.received"] / 2**20 for r in traffic],
            "s--",
            color="C2",
            label="received from clients",
        )
        axes[2].set_ylabel("traffic per round (MiB)")
        axes[2].set_ylim(bottom=0)  # the same model every round: a flat line, not a zoomed-in wiggle
        axes[2].set_title("communication")
    axes[0].set_title("global test accuracy")
    axes[1].set_title("global test loss")
    for ax in axes:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    return to_png(fig)


MARKERS = ("o", "s", "D", "^", "v", "P")


def compression_pareto(rows: list[dict[str, Any]]) -> bytes:
    """Each compression step as a point: test accuracy against file size on disk (log scale) and against CPU
    latency at batch 256; the dashed line links the points no other step beats on both axes (Pareto front)."""
    have_latency = all("latency_ms_b256" in r for r in rows)
    fig, axes = plt.subplots(
        1, 2 if have_latency else 1, figsize=(13 if have_latency else 6.5, 4.2), squeeze=False
    )
    panels = [("bytes", 1 / 1024, "file size on disk (KiB, log scale)", "accuracy vs size", True)]
    if have_latency:
        panels.append(
            ("latency_ms_b256", 1.0, "latency at batch 256 on this CPU (ms)", "accuracy vs latency", False)
        )
    for ax, (key, scale, xlabel, title, log) in zip(axes[0], panels):
        xs = [r[key] * scale for r in rows]
        accs = [100 * r["acc"] for r in rows]
        for i, (x, acc, row) in enumerate(zip(xs, accs, rows)):  # steps often sit close: told apart by legend
            ax.plot(
                x,
                acc,
                MARKERS[i % len(MARKERS)],
                color=f"C{i}",
                markersize=9,
                alpha=0.85,
                label=row["step"] if i == 0 else f"{row['step']} ({row['compression']:.1f}x smaller)",
            )
        front = pareto_front(xs, accs)
        ax.plot(
            [xs[i] for i in front],
            [accs[i] for i in front],
            "--",
            color="0.5",
            zorder=0,
            label="Pareto front",
        )
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.15, y=0.25)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    return to_png(fig)


def pareto_front(costs: list[float], accuracies: list[float]) -> list[int]:
    """Indices of the points that no other point beats on both cost (lower) and accuracy (higher), by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i]))
    front, best = [], float("-inf")
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return front
