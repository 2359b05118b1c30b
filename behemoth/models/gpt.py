"""A nanoGPT-style decoder-only transformer (GPT-2 architecture, small by default).

Token + learned position embeddings -> n_layer pre-LN causal blocks -> LayerNorm -> lm_head, whose
weight is the token embedding's (weight tying: fewer parameters, and it trains better on small data).
The blocks live in `self.blocks` (an nn.ModuleList) so that activation checkpointing and pipeline
splits can wrap them one by one.
"""

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from behemoth.errors import ModelError
from behemoth.models.common import BYTES_LM_SPEC
from behemoth.models.dropout import Dropout
from behemoth.models.entry import ModelEntry
from behemoth.models.kv_cache import KVCache, StaticKVCache
from behemoth.models.sampling import sample, sample_cached
from behemoth.models.transformer_blocks import Block, init_gpt2
from behemoth.spec import DataSpec


class GPTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=1)
    block_size: int = Field(128, ge=1)  # longest context the position embedding covers
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2

    @field_validator("n_embd")
    @classmethod
    def _heads_divide_width(cls, n_embd: int, info: ValidationInfo) -> int:
        n_head = info.data.get("n_head")
        if n_head and n_embd % n_head:
            raise ValueError(f"must be divisible by model.n_head = {n_head}")
        return n_embd


class GPT(nn.Module):
    def __init__(self, vocab_size: int, opts: GPTOptions):
        super().__init__()
        self.block_size = opts.block_size
        self.tok_emb = nn.Embedding(vocab_size, opts.n_embd)
        self.pos_emb = nn.Embedding(opts.block_size, opts.n_embd)
        self.drop = Dropout(opts.dropout)
        self.blocks = nn.ModuleList(
            Block(opts.n_embd, opts.n_head, 4 * opts.n_embd, opts.dropout, opts.bias, causal=True)
            for _ in range(opts.n_layer)
        )
        self.ln_f = nn.LayerNorm(opts.n_embd, bias=opts.bias)
        self.lm_head = nn.Linear(opts.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        init_gpt2(self, opts.n_layer)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) int64 -> (B, T, V)
        _, T = idx.shape
        if T > self.block_size:
            raise ModelError(f"sequence of {T} tokens is longer than model.block_size = {self.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def new_cache(self, capacity: int, pad: torch.Tensor, static: bool = False) -> KVCache | StaticKVCache:
        """An empty KV cache for up to `capacity` (<= block_size) tokens; pad (B,): left padding per row.
        `static`: the fixed-shape cache a compiled decode step needs (models/compiled_decode.py)."""
        if capacity > self.block_size:
            raise ModelError(
                f"a cache of {capacity} tokens is longer than model.block_size = {self.block_size}"
            )
        if static:
            return StaticKVCache(len(self.blocks), capacity, pad)
        return KVCache.empty(len(self.blocks), capacity, pad)

    def decode(self, idx: torch.Tensor, cache: KVCache | StaticKVCache) -> torch.Tensor:  # (B, T) -> (B, V)
        """The next-token logits after `idx`, which follows what `cache` holds (and is appended to it):
        the prompt once (prefill), then one token per step. Only the last position goes through lm_head."""
        _, T = idx.shape
        pos = cache.positions(T)  # (T,) or (B, T): per-row positions under left padding
        mask = cache.mask(T)  # None, or (B, 1, T, length + T)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block, kv in zip(self.blocks, cache.layers):
            x = block(x, kv, mask)  # (B, T, C)
        cache.advance(T)
        return self.lm_head(self.ln_f(x[:, -1]))  # (B, V)

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Sample `max_new_tokens` tokens after `idx` (B, T); returns (B, T + max_new_tokens).

        temperature < 1 sharpens (0: greedy), top_k keeps the k likeliest. The context is cropped to
        block_size: positions beyond it have no embedding. Decodes with a KV cache (the same tokens as
        `sample`'s cache-free loop; `use_cache=False` runs that loop).
        """
        run = sample_cached if use_cache else sample
        return run(
            self, idx, max_new_tokens, temperature, top_k, context=self.block_size, generator=generator
        )


def build(opts: GPTOptions, spec: DataSpec) -> GPT:
    seq_len = spec.input_shape[0]
    if seq_len > opts.block_size:
        raise ModelError(
            f"data.block_size = {seq_len} is longer than model.block_size = {opts.block_size} "
            "(the longest context it has position embeddings for): "
            "raise model.block_size or lower data.block_size"
        )
    return GPT(spec.num_classes, opts)


ENTRY = ModelEntry(
    name="gpt",
    summary="nanoGPT-style decoder-only transformer (pre-LN, causal attention, tied lm_head)",
    options=GPTOptions,
    build=build,
    tasks=("language_model",),
    example_spec=BYTES_LM_SPEC,
)
