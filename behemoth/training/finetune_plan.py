"""The fine-tuning memory plan of a Hugging Face causal LM: full fine-tuning, LoRA and QLoRA (4- and 8-bit
base), from config.json alone.

The model is built on the meta device (shapes, no weights read), so a 7B config plans on a laptop. Bytes,
per mode, for one process:

- weights: every parameter in train.param_dtype; QLoRA's quantized Linears at the bytes behemoth's own
  quantization holds them in (training/qlora.py: NF4 codes at 0.5 bytes a weight plus one int8 scale per
  64 weights plus the double-quantization factors; int8 at 1 byte plus one scale per output channel); LoRA
  adds the adapters, r (in + out) per adapted Linear.
- gradients and optimizer state: for the trainable parameters only (all of them, or the adapters), with the
  optimizer's slots from behemoth.config.optimizers.
- activations: an estimate, not a measurement (a 7B forward cannot run here to be recorded). Per token and
  decoder layer a Llama-style block keeps for backward its two norms' inputs and outputs, q, k, v, the
  attention output (fused attention: no T x T weights) and the MLP's gate, up, act(gate) and product:
  (6 h + 2 kv + 4 i) values in the compute dtype; plus the logits in fp32 twice (softmax and its gradient).
  The same estimate serves every mode: a frozen Linear still needs its input's gradient, so LoRA
  saves nearly what full fine-tuning saves.
"""

from dataclasses import dataclass

from torch import nn

from behemoth.training.qlora import NF4_BLOCK, NF4_SCALER_BLOCK, kept_in_full, largest_divisor_at_most

MODES = ("full", "lora", "qlora-8bit", "qlora-4bit")


@dataclass(frozen=True)
class ModelShape:
    """What the plan reads from a model built on meta."""

    params: int  # every parameter (tied ones once)
    buffer_values: int  # values in floating buffers (rotary frequencies), cast to train.param_dtype as well
    linears: list[tuple[str, int, int]]  # QLoRA's quantizable Linears: (name, in, out)
    adapted: list[tuple[str, int, int]]  # the Linears LoRA adapts: (name, in, out)
    hidden: int
    kv: int  # width of k (and of v): num_key_value_heads x head_dim
    intermediate: int
    layers: int
    vocab: int


@dataclass(frozen=True)
class FinetuneRow:
    mode: str
    trainable: int  # parameters that train
    weights: int  # bytes
    grads: int
    optimizer: int
    activations: int
    total: int


def shape_of(model: nn.Module, targets: list[str], config: dict) -> ModelShape:
    """Counts from a (meta) transformers model and its config.json: the quantizable Linears (every Linear
    but the output head and embedding-tied ones, as qlora.quantize_frozen_base picks them) and the Linears
    whose names end with one of `targets`."""
    skip = kept_in_full(model)
    linears = [
        (name, m.in_features, m.out_features)
        for name, m in model.named_modules()
        if type(m) is nn.Linear and id(m) not in skip
    ]
    adapted = [row for row in linears if any(row[0] == t or row[0].endswith("." + t) for t in targets)]
    seen = {id(p): p.numel() for p in model.parameters()}
    hidden = int(config.get("hidden_size") or config.get("n_embd"))
    heads = int(config.get("num_attention_heads") or config.get("n_head"))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    return ModelShape(
        params=sum(seen.values()),
        buffer_values=sum(b.numel() for b in model.buffers() if b.is_floating_point()),
        linears=linears,
        adapted=adapted,
        hidden=hidden,
        kv=kv_heads * head_dim,
        intermediate=int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden),
        layers=int(config.get("num_hidden_layers") or config.get("n_layer")),
        vocab=int(config["vocab_size"]),
    )


def nf4_bytes(numel: int, element: int) -> int:
    """Bytes of torchao's NF4Tensor for `numel` weights as NF4Linear makes it: 4-bit codes, an int8 scale
    per block, a factor per scale block, the 16-value table and the scales' mean (those in `element`)."""
    block = largest_divisor_at_most(numel, NF4_BLOCK)
    blocks = numel // block
    scaler_blocks = blocks // largest_divisor_at_most(blocks, NF4_SCALER_BLOCK)
    return numel // 2 + blocks + (scaler_blocks + 16 + 1) * element


def weight_bytes(shape: ModelShape, mode: str, element: int, adapter_params: int) -> int:
    if mode == "full":
        return (shape.params + shape.buffer_values) * element
    quantized = sum(i * o for _, i, o in shape.linears)
    rest = (shape.params - quantized) * element
    if mode == "qlora-4bit":
        base = rest + sum(nf4_bytes(i * o, element) for _, i, o in shape.linears)
    elif mode == "qlora-8bit":
        base = rest + sum(i * o + o * element for _, i, o in shape.linears)
    else:
        base = shape.params * element
    return base + (shape.buffer_values + adapter_params) * element


def activation_bytes(shape: ModelShape, tokens: int, compute: int) -> int:
    """The estimate in the module docstring, for `tokens` = batch x sequence."""
    per_layer = tokens * (6 * shape.hidden + 2 * shape.kv + 4 * shape.intermediate) * compute
    logits = tokens * shape.vocab * 4 * 2  # fp32 logits and their gradient
    return shape.layers * per_layer + logits


def finetune_rows(
    shape: ModelShape,
    rank: int,
    tokens: int,
    element: int,
    compute: int,
    optimizer_slots: float,
    optimizer_element: int | None,
) -> list[FinetuneRow]:
    """One row per mode. `element`: bytes of a parameter (train.param_dtype); `compute`: of an activation
    (train.precision). One process, no activation checkpointing: train.activation_checkpointing and FSDP do
    work per decoder layer (distributed/blocks.py), but this plan does not model them."""
    adapters = sum(rank * (i + o) for _, i, o in shape.adapted)
    rows = []
    for mode in MODES:
        trainable = shape.params if mode == "full" else adapters
        weights = weight_bytes(shape, mode, element, 0 if mode == "full" else adapters)
        grads = trainable * element
        optimizer = int(optimizer_slots * trainable * (optimizer_element or element))
        activations = activation_bytes(shape, tokens, compute)
        total = weights + grads + optimizer + activations
        rows.append(FinetuneRow(mode, trainable, weights, grads, optimizer, activations, total))
    return rows
