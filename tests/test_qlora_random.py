"""random_qlora_lm: a Llama of a config's shape built on the meta device and filled layer by layer straight
into NF4 / int8 (what bench/memory_finetune.py builds at 1B-7B), checked on a tiny config."""

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from behemoth.config import LoraConfig
from behemoth.training.lora import random_qlora_lm
from behemoth.training.qlora import Int8Linear, NF4Linear, module_bytes
from tests.hf_tiny import TINY

VOCAB = 64
KINDS = {4: NF4Linear, 8: Int8Linear}


def tiny(bits: int, targets: list[str]):
    config = LlamaConfig(**TINY, vocab_size=VOCAB, max_position_embeddings=32)
    return config, random_qlora_lm(config, LoraConfig(r=4, target_modules=targets, base_bits=bits), seed=1)


@pytest.mark.parametrize("bits", [4, 8])
def test_every_frozen_linear_is_quantized_and_nothing_is_left_on_meta(bits):
    config, model = tiny(bits, ["q_proj", "v_proj"])
    tensors = [*model.parameters(), *model.buffers()]
    assert not any(t.is_meta for t in tensors)
    quantized = [m for m in model.modules() if isinstance(m, KINDS[bits])]
    assert len(quantized) == 7 * config.num_hidden_layers  # q k v o gate up down
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in trainable)
    frozen = [p for n, p in model.named_parameters() if n not in trainable and p.dtype.is_floating_point]
    assert all(p.dtype == torch.bfloat16 for p in frozen)  # embeddings, norms, head: no fp32 copies
    # the weights are the drawn N(0, 0.02), not zeros or garbage; norms are ones
    weight = quantized[0].dequantized().weight.float()
    assert 0.015 < weight.std().item() < 0.025 and abs(weight.mean().item()) < 0.005
    norm = model.hf.base_model.model.model.norm.weight
    assert torch.equal(norm, torch.ones_like(norm))
    # the rotary table is computed again from the config, as a CPU-built model has it
    rotary = model.hf.base_model.model.model.rotary_emb
    assert torch.equal(rotary.inv_freq, LlamaRotaryEmbedding(config).inv_freq)
    # held in about bits / 8 bytes per weight (plus scales), not in bf16's 2
    linear_params = sum(m.in_features * m.out_features for m in quantized)
    assert sum(module_bytes(m) for m in quantized) <= linear_params * (0.6 if bits == 4 else 1.1)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_adapters_learn_through_the_quantized_base(bits):
    torch.manual_seed(0)
    _, model = tiny(bits, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    before = model(torch.zeros(1, 4, dtype=torch.long))
    assert torch.isfinite(before).all()
    ids = torch.randint(0, VOCAB, (2, 17))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        logits = model(ids[:, :-1])  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses  # only the adapters train, and they fit the batch
