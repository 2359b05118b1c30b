"""Text in, text out: encode a prompt with the run's tokenizer, sample with behemoth.models.sampling,
decode."""

import torch
from torch import nn

from behemoth.data.tokenizers import TextTokenizer
from behemoth.models.sampling import sample


def generate_text(
    model: nn.Module,
    tokenizer: TextTokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: int | None = None,
    seed: int | None = None,
) -> str:
    """The prompt followed by `max_new_tokens` sampled tokens, decoded; the same seed gives the same text."""
    ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.int64).unsqueeze(
        0
    )  # (1, T), a copy: encode may be read-only
    if ids.numel() == 0:
        raise ValueError("the prompt is empty: give at least one character")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    out = sample(model, ids.to(device), max_new_tokens, temperature, top_k, context, generator)
    return tokenizer.decode(out[0].cpu())
