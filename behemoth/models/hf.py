"""A local Hugging Face directory as a behemoth model: `model.name = "hf"`, `model.path = DIR`.

DIR holds config.json and *.safetensors (what `save_pretrained` writes). transformers builds the model
(`AutoModelForCausalLM` or `AutoModelForImageClassification`) from the local files only, never running the
directory's own code (trust_remote_code=False) and never reading pickles (use_safetensors=True). transformers
builds the model on the meta device and fills it shard by shard, so a sharded checkpoint near the size of
memory loads without a second full copy.

A thin adapter gives the model behemoth's contract: token ids (B, T) -> logits (B, T, V), or images
(B, C, H, W) -> logits (B, K). `adapter.hf` is the transformers model itself (for peft and export).
"""

import json
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from behemoth.errors import ModelError
from behemoth.spec import DataSpec

HFTask = Literal["causal_lm", "image_classification"]
# the attention kernel a causal LM trains with: "auto" picks by device and length (models/hf_attention.py)
AttentionChoice = Literal["auto", "sdpa", "eager"]
CONFIG_FILE = "config.json"
# what each task needs from the data, and the auto class that builds it
DATA_TASK = {"causal_lm": "language_model", "image_classification": "classification"}
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")  # Llama/Qwen/Mistral, GPT-2
# keyword arguments of every from_pretrained call: local files, no code from the directory, no pickles
SAFE_LOADING: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False, "use_safetensors": True}


class HFOptions(BaseModel):
    """[model] for name = "hf": the directory, and the task when config.json's architectures do not say."""

    model_config = ConfigDict(extra="forbid")

    path: str
    task: HFTask | None = None  # None: from config.json's "architectures"
    attention: AttentionChoice = "auto"  # causal LMs; an image classifier keeps what transformers loads

    @field_validator("path")
    @classmethod
    def _is_hf_directory(cls, path: str) -> str:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ValueError(
                "not a directory (a local Hugging Face model directory, e.g. from save_pretrained)"
            )
        if not (folder / CONFIG_FILE).is_file():
            raise ValueError(f"no {CONFIG_FILE} in it: not a Hugging Face model directory")
        return path


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """config.json as plain JSON (nothing in it runs)."""
    file = Path(path).expanduser() / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{file}: not a readable JSON config ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{file}: not a JSON object")
    return config


def infer_task(config: dict[str, Any], path: str | Path) -> HFTask:
    """The task config.json's "architectures" names (LlamaForCausalLM, GPT2LMHeadModel, ViTFor...)."""
    names = [str(a) for a in config.get("architectures") or []]
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        return "causal_lm"
    if any(n.endswith("ForImageClassification") for n in names):
        return "image_classification"
    raise ModelError(
        f"model.path = {str(path)!r}: cannot tell the task from config.json's architectures {names}; "
        "set model.task = 'causal_lm' or 'image_classification'"
    )


def context_length(config: dict[str, Any]) -> int | None:
    """The longest sequence the model has positions for, as config.json states it (None: not stated)."""
    for key in CONTEXT_KEYS:
        if isinstance(config.get(key), int):
            return config[key]
    return None


class HFCausalLM(nn.Module):
    """ids (B, T) -> logits (B, T, V). V is the data's vocabulary: a model whose embedding table is padded
    past its tokenizer (common: rounded up to a multiple of 64) has the padding's logits dropped, so the
    loss and sampling cover real tokens only."""

    def __init__(self, hf: nn.Module, vocab_size: int, attention: AttentionChoice = "auto"):
        super().__init__()
        self.hf = hf
        self.vocab_size = vocab_size
        self.attention = attention  # what training switches to (models/hf_attention.py)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.hf(input_ids=idx, use_cache=False).logits  # (B, T, V_model)
        if logits.size(-1) == self.vocab_size:
            return logits  # not a view: FSDP2 warns of (and an in-place op would break) a root returning one
        return logits[..., : self.vocab_size].contiguous()  # (B, T, V)


class HFImageClassifier(nn.Module):
    """pixel values (B, C, H, W) -> logits (B, K)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=x).logits  # (B, K)


def build_hf(opts: HFOptions, spec: DataSpec) -> nn.Module:
    """The directory's model, checked against the data before any weight is read."""
    config = read_hf_config(opts.path)
    task = opts.task or infer_task(config, opts.path)
    if spec.task != DATA_TASK[task]:
        raise ModelError(
            f"model.path = {opts.path!r} is a {task} model: it needs {DATA_TASK[task]} data, "
            f"the data are {spec.task}"
        )
    if task == "causal_lm":
        check_language_data(config, opts.path, spec)
        hf = load_pretrained("AutoModelForCausalLM", opts.path)
        return HFCausalLM(hf, spec.num_classes, opts.attention)
    extra = check_image_data(config, opts.path, spec)
    return HFImageClassifier(load_pretrained("AutoModelForImageClassification", opts.path, **extra))


def check_language_data(config: dict[str, Any], path: str, spec: DataSpec) -> None:
    """The data's sequences fit the model's context, and its token ids its vocabulary."""
    seq_len, context = spec.input_shape[0], context_length(config)
    if context is not None and seq_len > context:
        raise ModelError(
            f"data.block_size = {seq_len} is longer than the model's context ({context} positions in "
            f"{Path(path) / CONFIG_FILE}): lower data.block_size"
        )
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and vocab < spec.num_classes:
        raise ModelError(
            f"model.path = {path!r}: the model's vocabulary ({vocab} tokens) is smaller than the data's "
            f"({spec.num_classes} token ids): tokenize with the model's own tokenizer (data.tokenizer = 'hf')"
        )


def check_image_data(config: dict[str, Any], path: str, spec: DataSpec) -> dict[str, Any]:
    """Channels and image size must match; a different number of classes gets a fresh classifier head
    (the usual fine-tuning of a pretrained classifier), returned as from_pretrained arguments."""
    if len(spec.input_shape) != 3:
        raise ModelError(
            f"model.path = {path!r}: an image classifier needs images, the data have {spec.input_shape}"
        )
    channels, height, width = spec.input_shape
    want_channels, size = config.get("num_channels"), config.get("image_size")
    if isinstance(want_channels, int) and want_channels != channels:
        raise ModelError(
            f"model.path = {path!r}: the model reads {want_channels}-channel images, the data have {channels}"
        )
    if isinstance(size, int) and (height, width) != (size, size):
        raise ModelError(
            f"model.path = {path!r}: the model reads {size}x{size} images, the data are {height}x{width}"
        )
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or None
    if labels != spec.num_classes:
        return {"num_labels": spec.num_classes, "ignore_mismatched_sizes": True}
    return {}


def load_pretrained(auto_class: str, path: str, **kwargs: Any) -> nn.Module:
    """transformers' `auto_class`.from_pretrained on the local directory, in torch's default dtype (so
    train.param_dtype = "bf16" builds it in bf16); a failure is one ModelError line."""
    import transformers

    # The bars draw on stderr for every load (tiny models included); behemoth reports loading itself.
    transformers.utils.logging.disable_progress_bar()
    auto = getattr(transformers, auto_class)
    try:
        if torch.get_default_device().type == "meta":  # names and shapes only (export checks a checkpoint)
            config = transformers.AutoConfig.from_pretrained(
                str(Path(path).expanduser()), local_files_only=True, trust_remote_code=False, **kwargs
            )
            return auto.from_config(config, trust_remote_code=False)
        return auto.from_pretrained(
            str(Path(path).expanduser()), dtype=torch.get_default_dtype(), **SAFE_LOADING, **kwargs
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model.path = {path!r}: transformers cannot load it: {first}") from None


def build_hf_on_meta(path: str) -> nn.Module:
    """The directory's causal LM built from config.json on the meta device: shapes only, no weight read
    (what a memory plan needs of a model too big to load)."""
    with torch.device("meta"):
        return load_pretrained("AutoModelForCausalLM", path)


def _conv1d_type() -> type | None:
    """transformers' Conv1D class, None when transformers is not imported (then no model holds one)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def has_conv1d(model: nn.Module) -> bool:
    conv1d = _conv1d_type()
    return conv1d is not None and any(isinstance(m, conv1d) for m in model.modules())


def conv1d_as_linear(model: nn.Module) -> nn.Module:
    """`model` with every transformers `Conv1D` (GPT-2's attention and MLP layers: y = x W + b, W stored
    (in, out)) replaced in place by the equal nn.Linear (W transposed to (out, in)), so pruning and
    quantization, written for nn.Linear, see GPT-2's layers as they see Llama's. The same function up to
    float rounding of the matmul."""
    conv1d = _conv1d_type()
    if conv1d is None:
        return model
    for name, module in list(model.named_modules()):
        if not isinstance(module, conv1d):
            continue
        fan_in, fan_out = module.weight.shape  # (K, N)
        linear = nn.Linear(fan_in, fan_out, device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())  # (N, K)
            linear.bias.copy_(module.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
    return model


def hf_config_json(model: nn.Module) -> dict[str, Any] | None:
    """The config.json of the transformers causal LM inside `model` (plain JSON), None for other models:
    what a .bhm stores to rebuild the architecture without the model directory."""
    adapter = next((m for m in model.modules() if isinstance(m, HFCausalLM)), None)
    if adapter is None:
        return None
    return json.loads(adapter.hf.config.to_json_string(use_diff=False))


def build_hf_from_config(config: dict[str, Any], spec: DataSpec, where: str = "the config") -> nn.Module:
    """An HFCausalLM of random weights built from config.json's contents by transformers' own classes
    (`AutoConfig.for_model`, `AutoModelForCausalLM.from_config`): a model type transformers ships, never
    code named by the config (its `auto_map` is dropped, trust_remote_code=False)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ModelError(f"{where}: model_type {model_type!r} is not a model type transformers ships")
    names = [str(a) for a in config.get("architectures") or []]
    if not any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        raise ModelError(f"{where}: architectures {names} is not a causal LM")
    check_language_data(config, where, spec)
    # auto_map names code to import, quantization_config a quantizer backend (bitsandbytes fetches code at
    # import): the weights that go in are the caller's own, so neither is wanted
    dropped = ("model_type", "auto_map", "transformers_version", "quantization_config")
    fields = {k: v for k, v in config.items() if k not in dropped}
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **fields)
        hf = transformers.AutoModelForCausalLM.from_config(
            hf_config, trust_remote_code=False, dtype=torch.get_default_dtype()
        )
    except (ValueError, KeyError, TypeError, RuntimeError, ImportError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{where}: transformers cannot build this config: {first}") from None
    return HFCausalLM(hf, spec.num_classes)
