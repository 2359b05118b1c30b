"""The models bench/generate.py times: behemoth's GPT at GPT-2-small's shape and a TinyLlama-1.1B-shaped
Hugging Face Llama, each with its bf16 / int8 / int4 copies, torch's-kernel twins of the low-bit ones, and
transformers' own models on the same weights."""

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from behemoth.compression import int8_kernel, kernel_build  # noqa: E402
from behemoth.compression.weight_only import quantize_weight_only  # noqa: E402
from behemoth.models.gpt import GPT, GPTOptions  # noqa: E402

TORCH_INT4 = "behemoth int4 g128, torch's kernel"  # the same codes on _weight_int4pack_mm_for_cpu
TORCH_INT8 = "behemoth int8, torch's kernel"  # the same codes on _weight_int8pack_mm (where ours is used)


def on_torchs_kernels(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The int4 (and, where behemoth's int8 kernel runs, int8) copies of `model` on torch's kernels."""
    with kernel_build.torch_kernels_only():
        copies = {TORCH_INT4: quantize_weight_only(model, 4, 128, head=True)}
        if int8_kernel.library() is not None:
            copies[TORCH_INT8] = quantize_weight_only(model, 8, head=True)
    return copies


def hf_twin(model: GPT, opts: GPTOptions, vocab: int):
    """transformers' GPT2LMHeadModel with exactly `model`'s weights (exact GELU, as behemoth's nn.GELU)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=opts.block_size,
        n_embd=opts.n_embd,
        n_layer=opts.n_layer,
        n_head=opts.n_head,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf = GPT2LMHeadModel(config).eval()
    ours = model.state_dict()
    theirs = {
        "transformer.wte.weight": ours["tok_emb.weight"],
        "transformer.wpe.weight": ours["pos_emb.weight"],
    }
    theirs |= {"transformer.ln_f.weight": ours["ln_f.weight"], "transformer.ln_f.bias": ours["ln_f.bias"]}
    pairs = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj"}
    pairs |= {"mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    for i in range(opts.n_layer):
        for hf_name, name in pairs.items():
            weight = ours[f"blocks.{i}.{name}.weight"]
            # GPT-2's Conv1D stores (in, out): the transpose of nn.Linear's (out, in)
            theirs[f"transformer.h.{i}.{hf_name}.weight"] = (
                weight if "ln" in name else weight.t().contiguous()
            )
            theirs[f"transformer.h.{i}.{hf_name}.bias"] = ours[f"blocks.{i}.{name}.bias"]
    missing, unexpected = hf.load_state_dict(theirs, strict=False)
    left = [k for k in missing if k != "lm_head.weight"]  # tied to wte
    if left or unexpected:
        raise RuntimeError(f"weights do not map onto GPT2LMHeadModel: {left or unexpected}")
    return hf


def llama_1b(quick: bool) -> tuple[dict[str, torch.nn.Module], dict, int]:
    """A TinyLlama-1.1B-shaped LlamaForCausalLM (random weights made in bf16, the fp32 copy converted from
    them) and behemoth's rows over it: its HF wrapper, int8 / int4 weight-only copies (the head too)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from behemoth.models.hf import HFCausalLM

    shape = {"n_layer": 22, "hidden": 2048, "intermediate": 5632, "n_head": 32, "n_kv_head": 4}
    if quick:
        shape = {"n_layer": 2, "hidden": 256, "intermediate": 768, "n_head": 8, "n_kv_head": 2}
    vocab = 32000
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["n_layer"],
        num_attention_heads=shape["n_head"],
        num_key_value_heads=shape["n_kv_head"],
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    # made in bf16 directly: never a 4.4 GB fp32 model plus its bf16 copy at once
    bf16 = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    ours = HFCausalLM(bf16, vocab).eval()
    models: dict[str, torch.nn.Module] = {
        "behemoth int8": quantize_weight_only(ours, 8, head=True),
        "behemoth int4 g128": quantize_weight_only(ours, 4, 128, head=True),
        "behemoth bf16": ours,
    }
    models |= on_torchs_kernels(ours)
    fp32 = copy.deepcopy(bf16).float().eval()
    # behemoth's HF path and transformers' generate share one module per dtype (the same weights, no copy)
    models |= {"behemoth fp32": HFCausalLM(fp32, vocab).eval()}
    models |= {"transformers fp32": fp32, "transformers bf16": bf16}
    torchs = [name for name in (TORCH_INT8, TORCH_INT4) if name in models]
    compiled = ("behemoth int8", "behemoth int4 g128", *torchs)
    models |= {f"{name} compiled": models[name] for name in compiled}
    order = ["behemoth fp32", "behemoth bf16", "behemoth int8", "behemoth int4 g128", *torchs]
    order += [f"{name} compiled" for name in compiled]
    return {name: models[name] for name in [*order, "transformers fp32", "transformers bf16"]}, shape, vocab


def gpt2_small(quick: bool) -> tuple[dict[str, torch.nn.Module], dict, int]:
    """behemoth's GPT at GPT-2-small's shape, its bf16 / int8 / int4 copies and transformers' GPT2LMHeadModel
    twins (fp32, bf16) with the same weights."""
    vocab = 50257
    opts = GPTOptions(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0)
    if quick:
        opts = GPTOptions(n_layer=4, n_head=4, n_embd=256, block_size=256)
    fp32 = GPT(vocab, opts).eval()
    models = {
        "behemoth fp32": fp32,
        "behemoth bf16": GPT(vocab, opts).to(torch.bfloat16).eval(),
        "behemoth int8": quantize_weight_only(fp32, 8, head=True),
        "behemoth int4 g128": quantize_weight_only(fp32, 4, 128, head=True),
    }
    models |= on_torchs_kernels(fp32)
    models["behemoth bf16"].load_state_dict(fp32.state_dict())
    # the compiled rows are the same modules, compiled
    torchs = [name for name in (TORCH_INT8, TORCH_INT4) if name in models]
    compiled = ("behemoth fp32", "behemoth int8", "behemoth int4 g128", *torchs)
    models |= {f"{name} compiled": models[name] for name in compiled}
    try:
        models["transformers fp32"] = hf_twin(fp32, opts, vocab)
        models["transformers bf16"] = hf_twin(fp32, opts, vocab).to(torch.bfloat16)
    except ImportError:
        print("transformers is not installed: behemoth rows only", flush=True)
    return models, opts.model_dump(), vocab
