"""The adapter: explain a trained run's samples with one method, measure fidelity, write files.

runs/<name>/explain/<method>/
  attributions.json   raw attributions, targets, predictions, per-sample and summary fidelity figures
  grid.png            images: original | attribution | overlay
  tokens.html         text: byte tokens coloured by attribution
  features.png        tables: the most attributed features per sample
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from behemoth.config import RunConfig
from behemoth.config.explain import COMPLETE_METHODS, GRADIENT_METHODS, ExplainConfig
from behemoth.data.preprocessing import to_scaled_units
from behemoth.data.tokenizers import load_run_tokenizer
from behemoth.errors import BehemothError
from behemoth.explanations import fidelity as fid
from behemoth.explanations import pictures
from behemoth.explanations.methods import (
    SPACE_TOKEN,
    Explained,
    attribute,
    check_method,
    default_baselines,
    explained,
    kind_of,
    predict,
    runs_on_int8_kernels,
)
from behemoth.runs import ATTRIBUTIONS, RunDir, write_json
from behemoth.spec import Preprocessing
from behemoth.training.assembly import load_run_data, load_trained_model

Progress = Callable[[int, int], None]  # (done, total)


def pick_samples(cfg: RunConfig, ecfg: ExplainConfig, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `samples` inputs of the chosen split and their labels (LM: the true next token)."""
    data = load_run_data(cfg)
    split = data.splits().get(ecfg.split)
    if split is None:
        raise BehemothError(
            f"explain.split = {ecfg.split}: {data.name} has no such split (has: {', '.join(data.splits())})"
        )
    if ecfg.samples > len(split):
        raise BehemothError(
            f"--samples {ecfg.samples} is larger than the {ecfg.split} split ({len(split)} samples)"
        )
    x, y = split.x[: ecfg.samples], split.y[: ecfg.samples]
    return x, (y[:, -1] if task == "language_model" else y)


def budget(ecfg: ExplainConfig) -> dict[str, Any]:
    return dict(
        n_steps=ecfg.n_steps,
        n_samples=ecfg.n_samples,
        internal_batch_size=ecfg.internal_batch_size,
        patch=ecfg.patch,
        seed=ecfg.seed,
    )


def chunk_size(ecfg: ExplainConfig) -> int:
    """Samples per attribution call: the internal batch divided by the forward passes one sample costs."""
    cost = {"ig": ecfg.n_steps, "gradient_shap": ecfg.n_samples, "kernel_shap": 1, "lime": 1}.get(
        ecfg.method, 4
    )
    return max(1, ecfg.internal_batch_size // cost)


def attribute_all(tm: Explained, x, target, baselines, ecfg: ExplainConfig, progress: Progress | None):
    """Attributions for every sample, in chunks; IG also returns its steps and completeness errors."""
    size, parts, steps = chunk_size(ecfg), [], []
    for start in range(0, len(x), size):
        part = slice(start, start + size)
        if ecfg.method == "ig":
            a, s, _ = fid.ig_until_complete(
                tm,
                x[part],
                target[part],
                baselines[part],
                n_steps=ecfg.n_steps,
                max_steps=ecfg.max_steps,
                tol=ecfg.completeness_tol,
                internal_batch_size=ecfg.internal_batch_size,
            )
            steps.append(s)
        else:
            a = attribute(tm, x[part], target[part], ecfg.method, baselines=baselines[part], **budget(ecfg))
        parts.append(a)
        if progress:
            progress(min(len(x), start + size), len(x))
    return torch.cat(parts), (torch.cat(steps) if steps else None)


def misses(fidelity: dict[str, Any], ecfg: ExplainConfig) -> dict[str, Any]:
    """IG samples whose completeness error stayed at or above explain.completeness_tol even at max_steps:
    their attributions do not add up to f(x) - f(x'), and the record says so instead of hiding them."""
    errors = fidelity["per_sample"]["completeness_error"]
    above = [i for i, error in enumerate(errors) if error is not None and error >= ecfg.completeness_tol]
    return {
        "tolerance": ecfg.completeness_tol,
        "max_steps": ecfg.max_steps,
        "samples": above,
        "count": len(above),
        "max_error": max((errors[i] for i in above), default=None),
    }


def measure(tm: Explained, x, attr, baselines, target, ecfg: ExplainConfig) -> dict[str, Any]:
    """Per-sample fidelity figures (lists) under 'per_sample' and their summaries."""
    completeness = fid.completeness_error(tm, attr, x, baselines, target)
    deletion, insertion, del_auc, ins_auc = fid.deletion_insertion(
        tm, x, attr, baselines, target, ecfg.curve_steps
    )
    infid = fid.infidelity_score(tm, x, attr, target, ecfg.infidelity_samples, seed=ecfg.seed)
    rho = (
        fid.randomization_check(tm, x, target, attr, ecfg.method, **budget(ecfg))
        if ecfg.sanity_check
        else None
    )
    per_sample = {
        "completeness_error": completeness,
        "deletion_auc": del_auc,
        "insertion_auc": ins_auc,
        "infidelity": infid,
        "randomization_spearman": rho,
    }
    return {
        "summary": {k: fid.summarise(v) for k, v in per_sample.items()},
        "per_sample": {k: (v.tolist() if v is not None else None) for k, v in per_sample.items()},
        "curves": {"deletion": deletion.tolist(), "insertion": insertion.tolist()},
    }


def load_packed_model(path: Path, spec, method: str) -> torch.nn.Module:
    """A compressed model (.bhm) to explain in place of the run's own; checked against the run's data."""
    from behemoth.compression.pack import load_packed, read_packed  # the compress stage's file format

    packed_spec = read_packed(path).spec
    if (
        tuple(packed_spec.input_shape) != tuple(spec.input_shape)
        or packed_spec.num_classes != spec.num_classes
    ):
        raise BehemothError(
            f"{path}: a model for inputs {tuple(packed_spec.input_shape)} and {packed_spec.num_classes} "
            f"classes; the run's data has {tuple(spec.input_shape)} and {spec.num_classes}"
        )
    model = load_packed(path)
    if method in GRADIENT_METHODS and runs_on_int8_kernels(model):
        raise BehemothError(
            f"{path} runs on int8 kernels (torch.ao quantized), which have no gradients: "
            f"--method {method} needs them; use occlusion, kernel_shap or lime (or explain a pruned "
            "or k-means artifact, which keeps float weights)"
        )
    return model


def explain_run(
    run_dir: Path,
    cfg: RunConfig,
    ecfg: ExplainConfig,
    progress: Progress | None = None,
    out_dir: Path | None = None,
    packed: Path | None = None,
) -> dict[str, Any]:
    """Explain `ecfg.samples` inputs of a trained run with `ecfg.method`; write and return the record.

    With `packed` (a .bhm from `behemoth compress`), the compressed model is explained instead, and each
    sample's attributions are compared with the uncompressed run's (Spearman rank correlation, same targets).
    """
    run_spec = RunDir(run_dir).spec()
    spec, class_names, meta, prep = run_spec.data, run_spec.class_names, run_spec.meta, run_spec.preprocessing
    try:
        check_method(ecfg.method, kind_of(spec.task, spec.input_shape))
    except ValueError as exc:
        raise BehemothError(str(exc)) from None
    model = (
        load_trained_model(run_dir, cfg).float()
        if packed is None
        else load_packed_model(packed, spec, ecfg.method)
    )
    if packed is not None and runs_on_int8_kernels(model):
        ecfg = ecfg.model_copy(
            update={"sanity_check": False}
        )  # int8 weights cannot be re-initialised in place
    tm = explained(model, spec.task, spec.input_shape)
    x, labels = pick_samples(cfg, ecfg, spec.task)
    predictions = predict(tm, x).argmax(-1)
    target = predictions if ecfg.target == "pred" else labels
    token_text = pictures._token_text
    space = SPACE_TOKEN
    if tm.kind == "tokens":  # the run's own tokenizer: a BPE token is not a byte
        tokenizer = load_run_tokenizer(run_dir)
        space = int(tokenizer.encode(" ")[0])
        if tokenizer.name != "byte":
            token_text = lambda t: pictures.visible(tokenizer.decode([t]))  # noqa: E731
    baselines = default_baselines(x, tm.kind, ecfg.baseline, prep, space_token=space)

    started = time.perf_counter()
    attr, steps = attribute_all(tm, x, target, baselines, ecfg, progress)
    seconds = time.perf_counter() - started
    fidelity = measure(tm, x, attr, baselines, target, ecfg)
    if packed is not None:
        dense = explained(load_trained_model(run_dir, cfg).float(), spec.task, spec.input_shape)
        dense_attr, _ = attribute_all(dense, x, target, baselines, ecfg, None)
        rho = fid.spearman(attr, dense_attr)  # signed: same evidence, same direction
        fidelity["per_sample"]["compression_spearman"] = rho.tolist()
        fidelity["summary"]["compression_spearman"] = fid.summarise(rho)

    out = out_dir or RunDir(run_dir).explanations / (
        ecfg.method if packed is None else f"{ecfg.method}-compressed"
    )
    out.mkdir(parents=True, exist_ok=True)
    names = class_names or [token_text(i) for i in range(spec.num_classes)]
    titles = [
        f"#{i}  label {names[label]}  pred {names[pred]}  target {names[goal]}"
        for i, (label, pred, goal) in enumerate(zip(labels.tolist(), predictions.tolist(), target.tolist()))
    ]
    heading = heading_for(ecfg, fidelity["summary"], steps, packed)
    picture = draw(tm.kind, x, attr, titles, heading, prep, meta.get("feature_names"), out, token_text)
    record = {
        "method": ecfg.method,
        "target": ecfg.target,
        "split": ecfg.split,
        "samples": len(x),
        "kind": tm.kind,
        "baseline": baseline_description(tm.kind, ecfg.baseline),
        "model": str(packed) if packed is not None else "the run's trained weights",
        "seconds": seconds,
        "attributions_per_second": len(x) / seconds,
        "n_steps_used": steps.tolist() if steps is not None else None,
        "completeness_misses": misses(fidelity, ecfg) if ecfg.method == "ig" else None,
        "labels": labels.tolist(),
        "predictions": predictions.tolist(),
        "targets": target.tolist(),
        "fidelity": fidelity,
        "picture": picture.name,
        "config": ecfg.model_dump(),
        "attributions": attr.tolist(),
    }
    write_json(out / ATTRIBUTIONS, record)
    record["out_dir"] = str(out)
    return record


def baseline_description(kind: str, how: str) -> str:
    if kind == "tokens":
        return "every token a space; attributions on the token embedding (tok_emb) output"
    if kind == "image" and how == "black":
        return "the black image in normalised space: (0 - mean) / std per channel"
    return "zeros in normalised space (the training mean)"


def heading_for(
    ecfg: ExplainConfig, summary: dict, steps: torch.Tensor | None, packed: Path | None = None
) -> str:
    parts = [f"{ecfg.method} (target: {ecfg.target})" + (f" of {packed.name}" if packed is not None else "")]
    if steps is not None:
        parts.append(f"steps {int(steps.min())}-{int(steps.max())}")
    if (
        ecfg.method in COMPLETE_METHODS
    ):  # elsewhere the sum of attributions is not meant to equal f(x) - f(x')
        parts.append(f"completeness err median {summary['completeness_error']['median']:.2%}")
    parts.append(
        f"deletion AUC {summary['deletion_auc']['mean']:.3f}, "
        f"insertion AUC {summary['insertion_auc']['mean']:.3f}"
    )
    if summary.get("compression_spearman"):
        parts.append(f"rank corr. with uncompressed {summary['compression_spearman']['mean']:.2f}")
    return " | ".join(parts)


def draw(
    kind: str,
    x,
    attr,
    titles,
    heading,
    prep: Preprocessing | None,
    feature_names: list[str] | None,
    out: Path,
    token_text: Callable[[int], str],
) -> Path:
    if kind == "image":
        # pixels / input_scale: [0, 1], or e.g. [0, 16] for sklearn digits (scale 1)
        raw = to_scaled_units(x, prep) if prep is not None else x
        path = out / "grid.png"
        pictures.image_grid(raw / max(1.0, float(raw.max())), attr, titles, heading, path)
    elif kind == "tokens":
        path = out / "tokens.html"
        pictures.token_html(x, attr, titles, heading, path, token_text)
    else:
        names = feature_names or [f"x{i}" for i in range(x.shape[1])]
        path = out / "features.png"
        pictures.feature_bars(attr, names, titles, heading, path)
    return path
