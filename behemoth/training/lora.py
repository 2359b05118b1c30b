"""LoRA with peft: low-rank adapters on a frozen base, for [train.lora].

peft does the work (its LoRA layers, saving in its own format, merging) because that format is what the
ecosystem loads (`PeftModel.from_pretrained`). behemoth's contract stays as it was: the model maps inputs
to logits. For an hf model the transformers model inside the adapter is wrapped (`adapter.hf` becomes a
PeftModel, which keeps transformers' keyword calls), any other model (behemoth's GPT) is wrapped whole.

Only the adapters train, so only they are checkpointed: `checkpointed_names` tells the checkpoint code
which weights a LoRA model's checkpoint holds (the base is rebuilt from its own source on resume).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from behemoth.config import LoraConfig
from behemoth.errors import ConfigError
from behemoth.models.hf import HFCausalLM
from behemoth.training.qlora import dequantize_base, materialize_quantized, quantize_frozen_base


def add_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """`model` with LoRA adapters on cfg.target_modules; every other weight frozen (requires_grad False)."""
    import peft

    inner = getattr(model, "hf", None)  # behemoth.models.hf's adapters hold the transformers model here
    target = inner if isinstance(inner, nn.Module) else model
    task = "CAUSAL_LM" if isinstance(model, HFCausalLM) else None
    config = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save,
        task_type=task,
    )
    try:
        # adapters in the base's dtype: train.param_dtype is the storage of every parameter (peft would
        # otherwise keep bf16 bases' adapters in fp32)
        wrapped = peft.get_peft_model(target, config, autocast_adapter_dtype=False)
    except ValueError as exc:  # peft: no module matched, or no default targets for this model type
        first = str(exc).strip().splitlines()[0]
        if cfg.target_modules is None:
            raise ConfigError(
                f"train.lora.target_modules: not given, and peft has no default for this model ({first})"
            ) from None
        raise ConfigError(f"train.lora.target_modules = {cfg.target_modules}: {first}") from None
    if cfg.base_bits is not None:  # QLoRA: the frozen base quantized under the adapters (see qlora.py)
        quantize_frozen_base(wrapped, cfg.base_bits)
    if target is model:
        return wrapped
    model.hf = wrapped
    return model


def peft_model(model: nn.Module) -> nn.Module | None:
    """The PeftModel inside `model` (or `model` itself), None when it has no adapters. peft is imported
    only if something already imported it: a model without adapters costs nothing to ask about."""
    peft = sys.modules.get("peft")
    if peft is None:
        return None
    return next((m for m in model.modules() if isinstance(m, peft.PeftModel)), None)


def checkpointed_names(model: nn.Module) -> set[str] | None:
    """The state_dict keys a checkpoint of `model` holds: the trainable ones (adapters, modules_to_save)
    when it has LoRA adapters, None (everything) otherwise."""
    if peft_model(model) is None:
        return None
    return {name.replace("_orig_mod.", "") for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: nn.Module, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
    """The adapters in peft's format (adapter_config.json, adapter_model.safetensors): what
    `PeftModel.from_pretrained(base, folder)` loads. `weights` (keyed as `model`'s state_dict): the
    adapters' values when `model` holds only a shard of them (FSDP), consolidated by the caller."""
    wrapped = peft_model(model)
    if wrapped is None:
        raise ValueError("the model has no LoRA adapters to save")
    state = None
    if weights is not None:  # peft keys them by the PeftModel's own names
        prefix = next(name for name, m in model.named_modules() if m is wrapped)
        prefix = f"{prefix}." if prefix else ""
        state = {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
    # built beside and renamed in, so a run killed mid-save keeps its earlier adapters whole
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        wrapped.save_pretrained(str(tmp), state_dict=state)
        aside = folder.with_name(f".{folder.name}.old-{tmp.name[-8:]}")
        if folder.exists():
            os.replace(folder, aside)
        os.replace(tmp, folder)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def merge_lora(model: nn.Module) -> nn.Module:
    """`model` with its adapters folded into the base weights (W + (alpha / r) B A) and peft's wrappers
    gone: a plain model of the base's architecture."""
    wrapped = peft_model(model)
    if wrapped is None:
        return model
    dequantize_base(wrapped)  # a QLoRA base: merged into the weights it computed with
    merged = wrapped.merge_and_unload()
    if wrapped is model:
        return merged
    model.hf = merged
    return model


def random_qlora_lm(
    hf_config: Any,
    cfg: LoraConfig,
    *,
    dtype: torch.dtype = torch.bfloat16,
    adapter_dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> HFCausalLM:
    """A causal LM of `hf_config`'s shape (a transformers PretrainedConfig) with random weights, LoRA
    adapters per `cfg` and its frozen base in cfg.base_bits: built on the meta device and filled layer by
    layer straight into the quantized form (see qlora.materialize_quantized), never as a full-precision
    model. For memory and speed benchmarks of a model size no weights are at hand for."""
    import transformers

    if cfg.base_bits is None:
        raise ConfigError("train.lora.base_bits: a random quantized base needs 4 or 8")
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    model = add_lora(HFCausalLM(hf, hf_config.vocab_size), cfg.model_copy(update={"base_bits": None}))
    materialize_quantized(model, cfg.base_bits, dtype=dtype, adapter_dtype=adapter_dtype, seed=seed)
    return model
