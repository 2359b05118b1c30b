"""behemoth's GPT as a transformers GPT-2 (`GPT2LMHeadModel`): the same function, exactly, in fp32.

The two architectures are the same up to names and one layout detail, so the mapping is exact:
- pre-LN blocks, learned position embeddings, final LayerNorm, lm_head tied to the token embedding
  (tie_word_embeddings = true);
- q, k, v in one projection, in that order, heads side by side: GPT-2's c_attn splits the same way;
- GELU: behemoth uses the exact (erf) GELU, GPT-2's default is the tanh approximation ("gelu_new"), so the
  config says activation_function = "gelu" (transformers' exact GELU);
- LayerNorm eps 1e-5 (torch's default and GPT-2's layer_norm_epsilon); attention scaled by 1/sqrt(head size);
- GPT-2 keeps its linear weights as Conv1D, (in, out): the transpose of nn.Linear's (out, in);
- GPT-2 always has biases: a GPT built with bias = false exports zeros there, which adds nothing.
"""

from typing import Any

import torch
from torch import nn

from behemoth.errors import ModelError
from behemoth.models.gpt import GPT

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which behemoth's blocks use
# behemoth name inside blocks.<i>. -> GPT-2 name inside transformer.h.<i>.; True: a Conv1D (transposed)
BLOCK_NAMES = {
    "ln_1": ("ln_1", False),
    "attn.qkv": ("attn.c_attn", True),
    "attn.proj": ("attn.c_proj", True),
    "ln_2": ("ln_2", False),
    "mlp.fc": ("mlp.c_fc", True),
    "mlp.proj": ("mlp.c_proj", True),
}


def gpt2_config(model: GPT) -> dict[str, Any]:
    """The GPT2Config arguments that describe `model` (read off its modules, so any GPT instance works)."""
    first = model.blocks[0]
    return {
        "vocab_size": model.tok_emb.num_embeddings,
        "n_positions": model.block_size,
        "n_embd": model.tok_emb.embedding_dim,
        "n_layer": len(model.blocks),
        "n_head": first.attn.n_head,
        "n_inner": first.mlp.fc.out_features,
        "activation_function": "gelu",  # exact erf GELU, like nn.GELU()
        "resid_pdrop": first.attn.dropout,
        "embd_pdrop": model.drop.p,
        "attn_pdrop": first.attn.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "bos_token_id": None,  # behemoth's tokenizers have no special tokens
        "eos_token_id": None,
        "architectures": ["GPT2LMHeadModel"],
    }


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s weights under GPT-2's names and layout (biases a bias-free GPT lacks are zeros)."""
    out = {
        "transformer.wte.weight": model.tok_emb.weight,
        "transformer.wpe.weight": model.pos_emb.weight,
        "transformer.ln_f.weight": model.ln_f.weight,
        "transformer.ln_f.bias": _bias(model.ln_f, model.ln_f.weight.shape[0]),
        "lm_head.weight": model.tok_emb.weight,
    }
    for i, block in enumerate(model.blocks):
        for ours, (theirs, conv1d) in BLOCK_NAMES.items():
            module = block.get_submodule(ours)
            weight = module.weight.t() if conv1d else module.weight  # Conv1D: (in, out)
            out[f"transformer.h.{i}.{theirs}.weight"] = weight
            size = module.weight.shape[0]  # out features (Linear) or width (LayerNorm)
            out[f"transformer.h.{i}.{theirs}.bias"] = _bias(module, size)
    return {name: tensor.detach().float().contiguous() for name, tensor in out.items()}


def _bias(module: nn.Module, size: int) -> torch.Tensor:
    bias = getattr(module, "bias", None)
    return bias if bias is not None else torch.zeros(size)


def gpt_to_transformers(model: nn.Module) -> nn.Module:
    """A transformers GPT2LMHeadModel (fp32, eval mode) computing what `model` computes."""
    if not isinstance(model, GPT):
        raise ModelError(f"export to GPT-2 needs behemoth's gpt model, not {type(model).__name__}")
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**gpt2_config(model)))
    missing, unexpected = hf.load_state_dict(gpt2_state_dict(model), strict=False)
    if missing or unexpected:
        raise ModelError(f"GPT-2 mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return hf.eval()
