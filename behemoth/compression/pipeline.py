"""`compress_run`: a trained run -> structured pruning -> unstructured pruning -> quantization -> entropy
coding, each step retrained through the training engine where it needs it, each step's model written as
a .bhm and measured from that file (bytes on disk, test accuracy of the reloaded model, CPU latency).

Output, in <run>/compressed/ (or beside compress.output):
  model.bhm          the final artifact (load it with behemoth.load_packed)
  steps/NN-step.bhm  the artifact after each step
  compress.json      the table, per-layer sparsity and bits, the recipe; model.onnx with compress.onnx
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from behemoth.compression import kmeans, prune, quantize, structured, weight_only
from behemoth.compression.distill import DistillationLoss, load_teacher
from behemoth.compression.measure import decode_speeds, latencies
from behemoth.compression.recorder import Recorder, Say
from behemoth.config import EarlyStopConfig, RunConfig
from behemoth.config.compress import CompressConfig
from behemoth.data import DataBundle
from behemoth.data.bundle import TensorSplit
from behemoth.errors import BehemothError, ConfigError
from behemoth.files import atomic_write_bytes
from behemoth.models.hf import conv1d_as_linear
from behemoth.runs import COMPRESS_RECORD, RunDir, read_spec, write_json
from behemoth.training import BaseHook, ProgressHook, train
from behemoth.training.assembly import build_feed, load_run_data, load_trained_model
from behemoth.training.checkpoint import save_weights
from behemoth.training.lora import merge_lora


@dataclass
class CompressResult:
    rows: list[dict[str, Any]]  # the table: one row per step
    layers: dict[str, dict[str, Any]]  # per-layer weights, zeros, sparsity, bits of the final model
    artifact: Path
    out_dir: Path
    onnx: dict[str, Any] | None


class KeepZeros(BaseHook):
    """Re-zero pruned weights after every optimizer step (for training that swaps modules, e.g. QAT, where
    torch.nn.utils.prune's masks cannot stay attached)."""

    def __init__(self, model: nn.Module) -> None:
        self.masks = [
            (p, p.detach() != 0)
            for name, p in model.named_parameters()
            if name.endswith("weight") and p.ndim > 1 and bool((p == 0).any())
        ]

    def on_step_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        with torch.no_grad():
            for param, mask in self.masks:
                param.mul_(mask)


def plain_model(model: nn.Module) -> nn.Module:
    """What compression works on: LoRA adapters merged into their base (peft's merge_and_unload, so the
    artifact is a plain model and lora_B layers are never quantized on their own), and GPT-2's transformers
    Conv1D layers as the nn.Linear they are transposed (see models/hf.py)."""
    return conv1d_as_linear(merge_lora(model))


def check_recipe(cc: CompressConfig) -> None:
    if cc.prune > 0 and cc.schedule == "gradual" and cc.retrain_epochs == 0:
        raise ConfigError(
            "compress.schedule = 'gradual' prunes while retraining: needs compress.retrain_epochs >= 1"
            " (or compress.schedule = 'oneshot')"
        )
    if cc.quant == "qat" and cc.finetune_epochs == 0:
        raise ConfigError(
            "compress.quant = 'qat' trains with fake quantization: needs compress.finetune_epochs >= 1"
        )
    if cc.weight_only_bits is not None and cc.quant != "int4w" and cc.group != 128:
        raise ConfigError(f"compress.group = {cc.group} is for quant = 'int4w' (int8w has one scale per row)")
    if cc.prune == 0 and cc.layer_sparsity:
        raise ConfigError(
            "compress.layer_sparsity is set but compress.prune = 0: set prune to turn pruning on"
        )


def check_model_recipe(cfg: RunConfig, task: str) -> None:
    """Recipes that cannot apply to this kind of model, refused in one line before any work."""
    cc = cfg.compress
    if task == "language_model" and cc.quant in ("int8", "qat"):
        raise ConfigError(
            f"compress.quant = {cc.quant!r} quantizes activations from a float input, and a language model "
            "reads token ids: use quant = int8w, int4w (weight-only) or dynamic"
        )
    if cfg.model.name == "hf" and cc.quant in ("int8", "qat"):
        raise ConfigError(
            f"compress.quant = {cc.quant!r} swaps in eager-mode quantized modules, whose weights "
            "transformers' code cannot read (model.name = 'hf'): use quant = dynamic, kmeans<bits>, int8w "
            "or int4w"
        )
    if cfg.model.name == "hf" and cc.structured > 0:
        raise ConfigError(
            f"compress.structured = {cc.structured}: channel pruning rebuilds zoo models' layers, not a "
            "Hugging Face model's (model.name = 'hf'): use compress.prune for unstructured pruning"
        )


def retrain(
    model: nn.Module,
    data: DataBundle,
    cfg: RunConfig,
    epochs: int,
    hooks: list | None = None,
    precision: str | None = None,
    show_progress: bool = False,
    teacher: nn.Module | None = None,
    lr_scale: float | None = None,
) -> dict[str, float]:
    """Train `model` further through the engine at the reduced learning rate (cosine to zero, no warmup);
    with a `teacher`, the loss is the distillation loss (compress.temperature, compress.alpha)."""
    cc = cfg.compress
    lr_scale = cc.retrain_lr_scale if lr_scale is None else lr_scale
    train_cfg = cfg.train.model_copy(
        update={
            "epochs": epochs,
            "lr": cfg.train.lr * lr_scale,
            "warmup": 0,
            "max_steps": None,
            "schedule": "cosine",
            "schedule_unit": "step",
            "min_lr": 0.0,
            "early_stop": EarlyStopConfig(),
            "compile": False,
            "eval_every_steps": None,
            "precision": precision or cfg.train.precision,
        }
    )
    loss_fn = (
        DistillationLoss(teacher, cc.temperature, cc.alpha, train_cfg.precision)
        if teacher is not None
        else None
    )
    all_hooks = ([ProgressHook()] if show_progress else []) + list(hooks or [])
    result = train(
        model,
        data,
        train_cfg,
        cfg.data.batch_size,
        cfg.data.eval_batch_size,
        None,
        all_hooks,
        feed=build_feed(cfg, data),
        loss_fn=loss_fn,
    )
    if result.diverged:
        raise BehemothError(f"retraining diverged ({result.stop_reason}); lower compress.retrain_lr_scale")
    model.eval()
    return result.last_eval


def calibration_batches(split: TensorSplit, samples: int, batch: int = 256) -> list[torch.Tensor]:
    count = min(samples, len(split))
    return [split.x[i : min(i + batch, count)] for i in range(0, count, batch)]


def prune_with_retraining(
    model: nn.Module, data: DataBundle, cfg: RunConfig, teacher: nn.Module | None, show_progress: bool
) -> None:
    """Unstructured pruning to compress.prune: one-shot then retrain, or gradually while retraining."""
    cc = cfg.compress
    hooks = []
    if cc.schedule == "oneshot":
        prune.prune_magnitude(model, cc.prune, cc.scope, cc.layer_sparsity)
    else:
        steps_per_epoch = max(-(-len(data.train) // cfg.data.batch_size) // cfg.train.accumulate, 1)
        every = cc.prune_every or prune.default_prune_every(steps_per_epoch)
        end = int(cc.retrain_epochs * steps_per_epoch * cc.prune_end)
        hooks.append(prune.GradualPruning(cc.prune, cc.scope, end, every, cc.layer_sparsity))
    if cc.retrain_epochs:
        retrain(model, data, cfg, cc.retrain_epochs, hooks, show_progress=show_progress, teacher=teacher)
    prune.make_permanent(model)


def quantize_model(
    model: nn.Module,
    data: DataBundle,
    cfg: RunConfig,
    teacher: nn.Module | None,
    example: torch.Tensor,
    show_progress: bool,
) -> tuple[nn.Module, dict | None]:
    """compress.quant applied to `model`: (the model to pack, k-means codebooks or None)."""
    cc = cfg.compress
    if cc.kmeans_bits is not None:
        kmeans.share_weights(model, cc.kmeans_bits, cc.conv_bits)
        if cc.finetune_epochs:
            retrain(
                model,
                data,
                cfg,
                cc.finetune_epochs,
                show_progress=show_progress,
                teacher=teacher,
                lr_scale=cc.centroid_lr_scale,
            )
        return model, kmeans.finalize_shared(model)
    if cc.weight_only_bits is not None:  # language models: no calibration, no retraining
        return weight_only.quantize_weight_only(model, cc.weight_only_bits, cc.group, cc.head), None
    if cc.quant == "int8":
        batches = calibration_batches(data.train, cc.calibration_samples)
        return quantize.quantize_static(model, batches, cc.engine, cc.per_channel), None
    if cc.quant == "dynamic":
        return quantize.quantize_dynamic(model, cc.engine), None
    prepared = quantize.prepare_qat(model, cc.engine, cc.per_channel)  # qat
    retrain(
        prepared,
        data,
        cfg,
        cc.finetune_epochs,
        [KeepZeros(prepared)],
        precision="fp32",
        show_progress=show_progress,
        teacher=teacher,
    )
    return quantize.convert_qat(prepared, cc.engine, example), None


def compress_run(
    run_dir: Path,
    cfg: RunConfig,
    say: Say = lambda text: None,
    show_progress: bool = False,
    measure_latency: bool = True,
    measure_split: Literal["test", "val"] = "test",
) -> CompressResult:
    """Apply cfg.compress to the trained run in `run_dir`; write the artifacts; return the table.

    measure_split = "val" scores every step on the validation split and never reads the test split: for
    choosing a recipe (rates, bits) without touching the test set (bench/deep_compression.py --sweep)."""
    cc = cfg.compress
    check_recipe(cc)
    task = read_spec(run_dir)[0].task
    if cc.weight_only_bits is not None and task != "language_model":
        raise ConfigError(
            f"compress.quant = {cc.quant!r} is weight-only quantization for language models; {run_dir} is a "
            f"{task} run (use quant = int8, dynamic or qat)"
        )
    check_model_recipe(cfg, task)
    data = load_run_data(cfg)
    if measure_split == "val":
        test = data.val
    else:
        test = data.test if data.test is not None else data.val
    if test is None:
        raise BehemothError(f"{run_dir}: the dataset has no {measure_split} split to measure accuracy on")
    artifact = Path(cc.output) if cc.output else RunDir(run_dir).artifact
    out_dir = artifact.parent
    recorder = Recorder(cfg, run_dir, test, out_dir / "steps", say, "test" if test is data.test else "val")
    example = test.x[:2]

    baseline = plain_model(load_trained_model(run_dir, cfg))
    weights_file = RunDir(run_dir).weights
    # trained weights only in a checkpoint, or only LoRA adapters saved: measure a fresh dense file
    if not weights_file.is_file() or cfg.train.lora is not None:
        weights_file = out_dir / "steps" / "baseline.safetensors"
        weights_file.parent.mkdir(parents=True, exist_ok=True)
        save_weights(baseline, weights_file)
    recorder.baseline(baseline, weights_file)
    model = plain_model(load_trained_model(run_dir, cfg))  # the copy that gets compressed
    # compress.teacher: every retraining distils from that run (e.g. the uncompressed run itself)
    teacher = load_teacher(cc.teacher) if cc.teacher else None

    if cc.structured > 0:
        changes = structured.prune_units(model, cc.structured, example)
        say("structured: " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in changes.items()))
        if cc.retrain_epochs:
            retrain(model, data, cfg, cc.retrain_epochs, show_progress=show_progress, teacher=teacher)
        recorder.record("structured", model)
    if cc.prune > 0:
        prune_with_retraining(model, data, cfg, teacher, show_progress)
        recorder.record("pruned", model)
    layers = prune.sparsity_report(model)
    final, books = model, None
    if cc.quant != "none":
        final, books = quantize_model(model, data, cfg, teacher, example, show_progress)
        low_bit = weight_only.weight_only_layers(final)
        for name in layers:
            if cc.weight_only_bits is not None:
                layers[name]["bits"] = cc.weight_only_bits if name in low_bit else 32
            else:
                layers[name]["bits"] = books[name].bits if books else 8
        recorder.record("quantized", final, codebooks=books, float_model=model)
    rows = recorder.rows
    if cc.code != "none" or len(rows) == 1:
        recorder.record("coded" if cc.code != "none" else "packed", final, cc.code, artifact, books, model)
    else:  # nothing left to code: the artifact is the last step's file
        atomic_write_bytes(artifact, Path(rows[-1]["file"]).read_bytes())
        rows[-1]["file"] = str(artifact)

    if measure_latency:
        say("measuring latency (batch 1 and 256, interleaved) ...")
        timing = latencies(recorder.models, test.x[:256], (1, 256), cc.latency_repeats)
        for row in rows:
            row["latency_ms_b1"], row["latency_ms_b256"] = timing[row["step"]][1], timing[row["step"]][256]
        if task == "language_model":  # what a language model is used for: one token after another
            prompt = test.x[:1, :8]  # (1, <= 8) ids
            new_tokens = max(1, min(32, test.x.size(1) - prompt.size(1)))  # within the context window
            say(f"measuring greedy decode speed (batch 1, {new_tokens} new tokens) ...")
            speeds = decode_speeds(recorder.models, prompt, new_tokens, min(cc.latency_repeats, 3))
            for row in rows:
                row["decode_tokens_per_s"] = speeds[row["step"]]
    onnx = None
    if cc.onnx:
        from behemoth.compression.onnx_export import export_onnx, onnx_parity

        final_model = recorder.models[rows[-1]["step"]]
        path = export_onnx(final_model, example, out_dir / "model.onnx")
        onnx = {
            "file": str(path),
            "bytes": path.stat().st_size,
            **onnx_parity(final_model, path, test.x[:256]),
        }
    write_json(
        out_dir / COMPRESS_RECORD,
        {
            "run": str(run_dir),
            "recipe": cc.model_dump(mode="json"),
            "rows": rows,
            "layers": layers,
            "onnx": onnx,
        },
    )
    return CompressResult(rows, layers, artifact, out_dir, onnx)
