"""`behemoth.evaluate(run)` and `behemoth.predict(run, inputs)`: use a trained run."""

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from behemoth.data.preprocessing import normalise
from behemoth.errors import BehemothError, DataError
from behemoth.runs import RunDir, open_run, write_json
from behemoth.spec import DataSpec, Preprocessing
from behemoth.training import evaluate as evaluate_split
from behemoth.training import resolve_device
from behemoth.training.assembly import load_run_data, load_trained_model


def evaluate(
    run: str | Path, split: str = "test", out: Path | None = None, packed: Path | None = None
) -> dict[str, Any]:
    """Loss, accuracy, precision, recall and F1 (macro and per class) of a trained run on one split; written
    to `out` (default <run>/eval.json) and returned. A language model gets its perplexity (exp of the mean
    token cross-entropy) on that split, and under `by_split` the loss and perplexity on the validation and
    test text too. `packed`: score that .bhm of the run (e.g. int4w weights) on the run's data instead of
    its trained weights, written by default to <run>/compressed/eval-<file>.json."""
    run_dir, cfg = open_run(run)
    data = load_run_data(cfg)
    chosen = data.splits().get(split)
    if chosen is None:
        raise BehemothError(
            f"--split {split}: {data.name} has no such split (has: {', '.join(data.splits())})"
        )
    if packed is None:
        model = load_trained_model(run_dir, cfg)
        device = resolve_device(cfg.train.device)
    else:  # int8 and weight-only kernels are CPU kernels
        model, device = packed_model_of(run_dir, Path(packed), data.spec), torch.device("cpu")
    model.to(device)
    started = time.perf_counter()
    metrics = evaluate_split(
        model,
        chosen,
        data.spec,
        cfg.data.eval_batch_size,
        cfg.train.precision,
        device,
        cfg.train.channels_last,
        detailed=True,
    )
    metrics["samples_per_second"] = len(chosen) / (time.perf_counter() - started)
    metrics.update({"split": split, "samples": len(chosen), "class_names": data.class_names})
    if data.spec.task == "language_model":
        metrics["by_split"] = {}
        for name in ("val", "test"):
            part = data.splits().get(name)
            if part is None:
                continue
            same = metrics if name == split else None
            scores = same or evaluate_split(
                model, part, data.spec, cfg.data.eval_batch_size, cfg.train.precision, device
            )
            metrics["by_split"][name] = {
                "loss": scores["loss"],
                "perplexity": scores["perplexity"],
                "tokens": part.y.numel(),
            }
    if packed is not None:
        metrics["packed"] = str(packed)
    default = RunDir(run_dir).evaluation if packed is None else RunDir(run_dir).packed_evaluation(packed)
    metrics["file"] = str(out or default)
    write_json(out or default, metrics)
    return metrics


def packed_model_of(run_dir: Path, packed: Path, spec: DataSpec) -> torch.nn.Module:
    """The model in a .bhm, refused in one line unless it reads the run's data (same task and shapes)."""
    from behemoth.compression.pack import load_packed, packed_info

    held = packed_info(packed)["spec"]  # the checksummed header only
    if [held["task"], list(held["input_shape"]), held["num_classes"]] != [
        spec.task,
        list(spec.input_shape),
        spec.num_classes,
    ]:
        raise BehemothError(
            f"--packed {packed}: holds a {held['task']} model of input {held['input_shape']} and "
            f"{held['num_classes']} classes, not one of {run_dir}'s data ({spec.task}, "
            f"{list(spec.input_shape)}, {spec.num_classes})"
        )
    return load_packed(packed)


def read_inputs(path: Path, input_shape: tuple[int, ...], prep: Preprocessing | None) -> torch.Tensor:
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
    if (
        x.dtype == torch.uint8 and prep is not None
    ):  # raw pixels: scale and normalise as the training data were
        if x.ndim == len(input_shape) and len(input_shape) == 3:
            x = x.unsqueeze(1) if input_shape[0] == 1 else x.permute(0, 3, 1, 2)
        x = normalise(x, prep)
    if x.ndim == len(input_shape):  # a single sample
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{path}: inputs have shape {tuple(x.shape[1:])}, the model expects {tuple(input_shape)}"
        )
    return x.float() if x.is_floating_point() else x


def predict(run: str | Path, inputs: Path, top_k: int = 1) -> list[dict[str, Any]]:
    """The top-k classes and probabilities of a trained classifier for images or a .npy/.npz array."""
    run_dir, cfg = open_run(run)
    run_spec = RunDir(run_dir).spec()
    spec, class_names = run_spec.data, run_spec.class_names
    if spec.task != "classification":
        raise BehemothError(f"{run_dir} is a {spec.task} run: predict works on classifiers")
    model = load_trained_model(run_dir, cfg)
    x = read_inputs(Path(inputs), spec.input_shape, run_spec.preprocessing)
    with torch.no_grad():
        probs = model(x).softmax(-1)
    top = probs.topk(min(top_k, spec.num_classes), dim=-1)
    names = class_names or [str(i) for i in range(spec.num_classes)]
    return [
        {"index": i, "classes": [names[k] for k in c], "probabilities": p}
        for i, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist()))
    ]
