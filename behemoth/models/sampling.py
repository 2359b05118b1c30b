"""Autoregressive sampling with temperature and top-k.

`sample` works for any model mapping (B, T) ids to (B, T, V) logits and has no cache: every new token
re-reads the (cropped) context, exact for every model (GPT, RNN). `sample_cached` / `stream_tokens` are for
models with a KV cache (`new_cache` and `decode`, e.g. GPT): the prompt is read once, then one token per
step. Once the context reaches `context` tokens, the cache-free loop slides its window by one token each
step, which moves every position embedding; the cached loop then re-prefills that same cropped window each
step (as costly as the cache-free loop, and the same tokens) instead of approximating it.
They live with the models (GPT.generate calls them); turning text into ids and back is behemoth.lm's job.
"""

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, V) logits -> (B, 1) ids. temperature 0 is greedy; < 1 sharpens; top_k keeps the k likeliest."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def check_sampling(temperature: float, top_k: int | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature = {temperature}: must be >= 0 (0 is greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k = {top_k}: must be >= 1")


@torch.no_grad()
def sample(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Append `max_new_tokens` sampled ids to `idx` (B, T); returns (B, T + max_new_tokens).

    `context` crops what the model reads to the last N tokens (a GPT has no position embedding beyond
    its block_size; an RNN trained on N-token sequences has never run longer). Dropout is off while sampling.
    """
    check_sampling(temperature, top_k)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            window = idx if context is None else idx[:, -context:]  # (B, <= context)
            logits = model(window)[:, -1, :]  # (B, V): the prediction after the last token
            idx = torch.cat((idx, next_token(logits, temperature, top_k, generator)), dim=1)  # (B, T + 1)
    finally:
        model.train(was_training)
    return idx


def has_cache(model: nn.Module) -> bool:
    """Whether `model` decodes with a KV cache (GPT does; an RNN does not)."""
    return callable(getattr(model, "new_cache", None)) and callable(getattr(model, "decode", None))


def stream_tokens(
    model: Any,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: int | None = None,
    generator: torch.Generator | None = None,
    pad: torch.Tensor | None = None,
    *,
    compiled: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield each new (B, 1) id of a KV-cached decode of `idx` (B, T), as it is sampled.

    `pad` (B,): rows of `idx` left-padded by that many columns (batched prompts of different lengths);
    each row then gets the tokens it would get alone. `compiled`: one-token steps run through a
    torch.compile'd step over a fixed-size cache (models/compiled_decode.py; compiling takes a while, the
    tokens are the eager ones up to floating-point rounding). Dropout is off while sampling.
    """
    check_sampling(temperature, top_k)
    window = min(context or model.block_size, model.block_size)  # what the cache-free loop reads
    size = min(idx.size(1) + max_new_tokens, window)  # cache slots: no more than this text needs
    pad = torch.zeros(idx.size(0), dtype=torch.int64, device=idx.device) if pad is None else pad
    step = model.decode
    if compiled:
        from behemoth.models.compiled_decode import compiled_decode  # torch.compile loads only when asked

        step = compiled_decode(model)
    was_training = model.training
    model.eval()
    cache, filled, token = None, 0, idx[:, -1:]
    try:
        with torch.no_grad():
            for _ in range(max_new_tokens):
                # full (or first step): (re)prefill the window the cache-free loop reads
                if cache is None or filled >= window:
                    ids = idx[:, -window:]  # (B, <= window)
                    window_pad = (pad - (idx.size(1) - ids.size(1))).clamp_min(0)  # (B,)
                    if cache is None:
                        extra = {"static": True} if compiled else {}
                        cache = model.new_cache(size, window_pad, **extra)
                    else:
                        cache.reset(window_pad)
                    logits, filled = model.decode(ids, cache), ids.size(1)  # (B, V)
                else:  # one new token: the last one sampled (its own tensor, idx[:, -1:] is a strided view)
                    logits, filled = step(token, cache), filled + 1  # (B, V)
                token = next_token(logits, temperature, top_k, generator)  # (B, 1)
                idx = torch.cat((idx, token), dim=1)
                yield token
    finally:
        model.train(was_training)


def sample_cached(
    model: Any,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: int | None = None,
    generator: torch.Generator | None = None,
    pad: torch.Tensor | None = None,
    *,
    compiled: bool = False,
) -> torch.Tensor:
    """`sample` with a KV cache: returns (B, T + max_new_tokens), the same tokens for greedy decoding."""
    tokens = stream_tokens(
        model, idx, max_new_tokens, temperature, top_k, context, generator, pad, compiled=compiled
    )
    new = list(tokens)
    return torch.cat([idx, *new], dim=1)
