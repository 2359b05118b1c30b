"""`behemoth evaluate` and `behemoth predict`: use a trained run."""

import time
from pathlib import Path

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from behemoth.cli.app import app
from behemoth.data import load_data
from behemoth.errors import BehemothError, DataError
from behemoth.pipeline import load_trained_model, set_threads
from behemoth.runs import open_run, read_spec, write_json
from behemoth.training import evaluate as evaluate_split
from behemoth.training import resolve_device

console = Console()


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/mnist-cnn."),
    split: str = typer.Option("test", help="Which split to evaluate: test, val or train."),
    out: Path = typer.Option(None, help="Where to write the JSON (default: <run>/eval.json)."),
) -> None:
    """Print loss, accuracy, precision, recall, F1 (macro and per class) and write them as JSON."""
    run_dir = open_run(run)[0]
    written = out or run_dir / "eval.json"
    evaluate_run(run_dir, split, written)
    console.print(f"written {written}")


def evaluate_run(run_dir: Path, split: str, out: Path, show: bool = True) -> dict:
    """Evaluate a trained run on one split with the full report; write it to `out` and return it."""
    run_dir, cfg = open_run(run_dir)
    set_threads(cfg.train.threads)
    data = load_data(cfg.data)
    chosen = data.splits().get(split)
    if chosen is None:
        raise BehemothError(f"--split {split}: {data.name} has no such split (has: {', '.join(data.splits())})")
    model = load_trained_model(run_dir, cfg)
    device = resolve_device(cfg.train.device)
    model.to(device)
    started = time.perf_counter()
    metrics = evaluate_split(model, chosen, data.spec, cfg.data.eval_batch_size, cfg.train.precision, device,
                             cfg.train.channels_last, detailed=True)
    metrics["samples_per_second"] = len(chosen) / (time.perf_counter() - started)
    metrics.update({"split": split, "samples": len(chosen), "class_names": data.class_names})
    write_json(out, metrics)
    if show:
        print_metrics(metrics, data.class_names)
    return metrics


def print_metrics(metrics: dict, class_names: list[str]) -> None:
    head = Table(title=f"{metrics['split']} ({metrics['samples']} samples)")
    for key in ("loss", "acc", "precision_macro", "recall_macro", "f1_macro", "perplexity", "samples_per_second"):
        if key in metrics:
            head.add_column(key)
    head.add_row(*(f"{metrics[k]:.4f}" if k != "samples_per_second" else f"{metrics[k]:,.0f}"
                   for k in ("loss", "acc", "precision_macro", "recall_macro", "f1_macro", "perplexity",
                             "samples_per_second") if k in metrics))
    console.print(head)
    if "f1_per_class" not in metrics:
        return
    per_class = Table(title="per class")
    for column in ("class", "precision", "recall", "f1"):
        per_class.add_column(column)
    names = class_names or [str(i) for i in range(len(metrics["f1_per_class"]))]
    for i, name in enumerate(names):
        per_class.add_row(name, *(f"{metrics[f'{m}_per_class'][i]:.4f}" for m in ("precision", "recall", "f1")))
    console.print(per_class)


def read_inputs(path: Path, input_shape: tuple[int, ...], meta: dict) -> torch.Tensor:
    """Inputs for predict: image files (a file or folder) or a .npy/.npz array, preprocessed like training."""
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if path.suffix in (".npy", ".npz"):
        array = np.load(path) if path.suffix == ".npy" else np.load(path)["x"]
    else:
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        channels, height, width = input_shape
        mode = "L" if channels == 1 else "RGB"
        try:
            images = [np.asarray(Image.open(f).convert(mode).resize((width, height))) for f in files]
        except OSError as exc:
            raise DataError(f"cannot read image {exc.filename or path}: {exc}") from None
        array = np.stack(images)
    x = torch.from_numpy(np.asarray(array))
    if x.dtype == torch.uint8:  # raw pixels: scale and normalise as the training data were
        x = x.float() / float(meta.get("input_scale", 255.0))
        if x.ndim == len(input_shape) and len(input_shape) == 3:
            x = x.unsqueeze(1) if input_shape[0] == 1 else x.permute(0, 3, 1, 2)
        mean = torch.tensor(meta.get("mean", [0.0])).view(1, -1, *([1] * (x.ndim - 2)))
        std = torch.tensor(meta.get("std", [1.0])).view(1, -1, *([1] * (x.ndim - 2)))
        x = (x - mean) / std
    if x.ndim == len(input_shape):  # a single sample
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"{path}: inputs have shape {tuple(x.shape[1:])}, the model expects {tuple(input_shape)}")
    return x.float() if x.is_floating_point() else x


@app.command()
def predict(
    run: Path = typer.Argument(..., help="A run directory, e.g. runs/mnist-cnn."),
    inputs: Path = typer.Argument(..., help="An image, a folder of images, or a .npy/.npz array (key x)."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="How many classes to show per input."),
    out: Path = typer.Option(None, help="Also write the predictions as JSON here."),
) -> None:
    """Predict classes for new inputs with a trained run."""
    run_dir, cfg = open_run(run)
    spec, class_names, meta = read_spec(run_dir)
    if spec.task != "classification":
        raise BehemothError(f"{run_dir} is a {spec.task} run: predict works on classifiers")
    model = load_trained_model(run_dir, cfg)
    x = read_inputs(inputs, spec.input_shape, meta)
    with torch.no_grad():
        probs = model(x).softmax(-1)
    top = probs.topk(min(top_k, spec.num_classes), dim=-1)
    names = class_names or [str(i) for i in range(spec.num_classes)]
    rows = []
    for i, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        rows.append({"index": i, "classes": [names[k] for k in c], "probabilities": p})
        console.print(f"{i}: " + ", ".join(f"{names[k]} ({q:.3f})" for k, q in zip(c, p)))
    if out:
        write_json(out, rows)
