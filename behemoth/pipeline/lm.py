"""`behemoth.generate(run, prompt)` and `behemoth.export(run)`: use and hand over a trained run's weights."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from behemoth.errors import BehemothError, RunDirError
from behemoth.runs import RunDir, open_run, read_spec

if TYPE_CHECKING:
    from behemoth.pipeline.hf_export import ExportedHF


def _language_model(run: str | Path, packed: str | Path | None) -> tuple[Any, Any, int]:
    """(model, tokenizer, context) of a language-model run: its trained weights, or the .bhm `packed`
    (e.g. from `behemoth compress RUN --recipe quant=int4w`), which must be a model of the same data."""
    from behemoth.data.tokenizers import load_run_tokenizer  # torch loads only when it runs
    from behemoth.training import resolve_device
    from behemoth.training.assembly import load_trained_model, set_threads

    run_dir, cfg = open_run(run)
    spec, _, _ = read_spec(run_dir)
    if spec.task != "language_model":
        raise BehemothError(
            f"{run_dir} is a {spec.task} run: generate needs a language model (e.g. gpt-text)"
        )
    set_threads(cfg.train.threads)
    tokenizer = load_run_tokenizer(run_dir)
    if packed is None:
        model = load_trained_model(run_dir, cfg).to(resolve_device(cfg.train.device))
    else:
        from behemoth.compression.pack import load_packed, packed_info

        header = packed_info(packed)
        if header["spec"]["task"] != "language_model" or header["spec"]["num_classes"] != spec.num_classes:
            raise BehemothError(
                f"--packed {packed}: holds a {header['spec']['task']} model over "
                f"{header['spec']['num_classes']} classes, not a language model of {run_dir}'s "
                f"{spec.num_classes}-token vocabulary"
            )
        model = load_packed(packed)  # weight-only int8/int4 kernels are CPU kernels: stays on the CPU
    return model, tokenizer, spec.input_shape[0]


def _check_compilable(model: Any, compiled: bool) -> None:
    from behemoth.models.hf_generate import is_hf_causal
    from behemoth.models.sampling import has_cache

    if compiled and not (has_cache(model) or is_hf_causal(model)):
        raise BehemothError(
            f"--compile: a {type(model).__name__} decodes without a KV cache, so it has no one-token step to "
            "compile (gpt and hf causal LMs have one): drop --compile"
        )


def generate(
    run: str | Path,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int | None = None,
    packed: str | Path | None = None,
    compiled: bool = False,
) -> str:
    """The prompt continued by a trained language model (gpt, rnn), encoded and decoded with the run's
    tokenizer; the model reads at most data.block_size tokens of context (GPT: through a KV cache; an hf
    causal LM: through transformers' generate and its cache).
    `packed`: generate from that .bhm of the run (quantized weights) instead of its trained weights.
    `compiled`: decode each token through a torch.compile'd step (faster tokens after a compile of seconds
    to minutes; GPT and hf causal LMs)."""
    from behemoth.lm.generate import generate_text

    if not prompt:
        raise BehemothError("--prompt is empty: give at least one character to continue")
    model, tokenizer, context = _language_model(run, packed)
    _check_compilable(model, compiled)
    return generate_text(
        model, tokenizer, prompt, max_new_tokens, temperature, top_k, context, seed, compiled=compiled
    )


def generate_stream(
    run: str | Path,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int | None = None,
    packed: str | Path | None = None,
    compiled: bool = False,
) -> Iterator[str]:
    """`generate`, piece by piece: the prompt, then the text of each token as it is sampled (joined, the
    same text as `generate`)."""
    from behemoth.lm.generate import stream_text

    if not prompt:
        raise BehemothError("--prompt is empty: give at least one character to continue")
    model, tokenizer, context = _language_model(run, packed)
    _check_compilable(model, compiled)
    return stream_text(
        model, tokenizer, prompt, max_new_tokens, temperature, top_k, context, seed, compiled=compiled
    )


@dataclass
class Exported:
    path: Path
    tensors: int
    values: int
    checkpoint: str  # the checkpoint directory's name
    sharded: bool  # read from torch.distributed.checkpoint shards


def export(
    run: str | Path,
    out: Path | None = None,
    step: int | None = None,
    *,
    hf: Path | None = None,
    merge: bool = False,
) -> "Exported | ExportedHF":
    """One safetensors file of a run's checkpoint (any strategy wrote it), checked against the run's model;
    or, with `hf`, the run's model and tokenizer as a Hugging Face directory (pipeline/hf_export.py), a LoRA
    run's adapters folded in with `merge`."""
    import torch

    if hf is not None:
        from behemoth.pipeline.hf_export import export_hf

        run_dir, cfg = open_run(run)
        return export_hf(run_dir, cfg, Path(hf), step, merge)
    if merge:
        raise BehemothError("--merge writes a Hugging Face directory: give --hf DIR")
    run_dir, cfg = open_run(run)
    if cfg.train.lora is not None:
        raise BehemothError(
            f"{run_dir} trained LoRA adapters (its checkpoints hold them only): write the whole model with "
            f"--merge --hf DIR; the adapters alone are in {RunDir(run_dir).adapter_dir} (peft's format)"
        )

    from behemoth.models import build_model
    from behemoth.training.checkpoint import (
        checkpoint_at_step,
        checkpoint_weights,
        latest_checkpoint,
        write_safetensors,
    )

    checkpoint = latest_checkpoint(run_dir) if step is None else checkpoint_at_step(run_dir, step)
    if checkpoint is None or not checkpoint.is_dir():
        what = "no checkpoint" if step is None else f"no checkpoint at step {step}"
        held = sorted(p.name for p in RunDir(run_dir).checkpoints.glob("step-*"))
        raise RunDirError(f"{run_dir} has {what} (checkpoints/ holds: {', '.join(held) or 'nothing'})")
    weights = checkpoint_weights(checkpoint)
    spec = read_spec(run_dir)[0]
    with torch.device("meta"):  # the model's names and shapes, without allocating it
        model = build_model(cfg.model.name, cfg.model.options, spec)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[1].strip()
        raise RunDirError(f"{checkpoint} does not fit model {cfg.model.name!r}: {reason}") from None
    target = Path(out) if out is not None else RunDir(run_dir).exported_weights
    target.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors({name: tensor.contiguous() for name, tensor in weights.items()}, target)
    return Exported(
        target,
        len(weights),
        sum(t.numel() for t in weights.values()),
        checkpoint.name,
        (checkpoint / "dcp").is_dir(),
    )
