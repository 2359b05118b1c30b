"""Autoregressive sampling with temperature and top-k, for any model mapping (B, T) ids to (B, T, V) logits.

No KV cache: every new token re-reads the (cropped) context. That costs O(T) forward passes of up to
`context` tokens each; it is exact for every model (GPT, RNN) and fast enough for sampling on a CPU.
It lives with the models (GPT.generate calls it); turning text into ids and back is behemoth.lm's job.
"""

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
    if temperature < 0:
        raise ValueError(f"temperature = {temperature}: must be >= 0 (0 is greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k = {top_k}: must be >= 1")
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
