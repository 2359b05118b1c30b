"""Which attention kernel a Hugging Face causal LM trains with (`model.attention`).

transformers loads a model with torch's scaled_dot_product_attention ("sdpa"), which on a CPU runs torch's
flash-attention kernel. Its backward is slow for short sequences: one Llama layer's bf16 training step
(bench/attention_kernels.py, 2,048 tokens per batch) takes 1.2-1.3x as long with it as with transformers'
own "eager" attention (two matmuls and a softmax) at 128 tokens and 1.03-1.15x at 192; from 256 on flash is
ahead, by 1.5-4x from 512 (and eager keeps the (T, T) probabilities for the backward). So "auto" trains
with eager on a CPU up to EAGER_MAX_TOKENS and with sdpa otherwise. Both are transformers' code for the
model's own architecture: the choice changes the kernel, not the function.
"""

import torch
from torch import nn

from behemoth.models.hf import AttentionChoice, HFCausalLM
from behemoth.spec import DataSpec

EAGER_MAX_TOKENS = 192  # the crossover bench/attention_kernels.py measured (results/attention_kernels.json)


def training_attention(choice: AttentionChoice, device: torch.device, seq_len: int) -> str:
    """The transformers attn_implementation to train with: `choice`, or for "auto" the faster kernel for
    sequences of `seq_len` tokens on `device`."""
    if choice != "auto":
        return choice
    return "eager" if device.type == "cpu" and seq_len <= EAGER_MAX_TOKENS else "sdpa"


def set_training_attention(model: nn.Module, device: torch.device, spec: DataSpec) -> None:
    """Switch the HF causal LM inside `model` (under LoRA or not; nothing for other models) to the attention
    it trains fastest with on `device` for `spec`'s sequences."""
    adapter = next((m for m in model.modules() if isinstance(m, HFCausalLM)), None)
    if adapter is None:
        return
    from transformers import PreTrainedModel

    # the outermost transformers model (under peft's wrappers): it passes the choice to its submodules
    pretrained = next(m for m in adapter.hf.modules() if isinstance(m, PreTrainedModel))
    pretrained.set_attn_implementation(training_attention(adapter.attention, device, spec.input_shape[0]))
