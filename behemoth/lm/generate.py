"""Text in, text out: encode prompts with the run's tokenizer, sample with behemoth.models.sampling (with a
KV cache where the model has one; a Hugging Face causal LM with transformers' `generate` and its cache),
decode; `stream_text` yields the text as it is generated."""

from collections.abc import Iterator

import torch
from torch import nn

from behemoth.data.tokenizers import TextTokenizer
from behemoth.models.hf_generate import hf_generate, hf_stream_tokens, is_hf_causal
from behemoth.models.sampling import has_cache, sample, sample_cached, stream_tokens

REPLACEMENT = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole UTF-8 character


def _encode(tokenizer: TextTokenizer, prompt: str, device: torch.device) -> torch.Tensor:
    ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.int64)  # (T,), a copy: encode may be read-only
    if ids.numel() == 0:
        raise ValueError("the prompt is empty: give at least one character")
    return ids.to(device)


def _generator(model: nn.Module, seed: int | None) -> torch.Generator | None:
    device = next(model.parameters()).device
    return torch.Generator(device=device).manual_seed(seed) if seed is not None else None


def _hf_cached(model: nn.Module, prompt_len: int, max_new_tokens: int, context: int | None) -> bool:
    """A Hugging Face causal LM generates with transformers' own cache while the whole text fits the context
    the run reads (data.block_size); past it, the cache-free loop slides that window, as for every model."""
    return is_hf_causal(model) and (context is None or prompt_len + max_new_tokens <= context)


def generate_text(
    model: nn.Module,
    tokenizer: TextTokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    *,
    compiled: bool = False,
) -> str:
    """The prompt followed by `max_new_tokens` sampled tokens, decoded; the same seed gives the same text.
    `compiled`: cached decoding through a compiled step (models/compiled_decode.py)."""
    device = next(model.parameters()).device
    ids = _encode(tokenizer, prompt, device).unsqueeze(0)  # (1, T)
    if use_cache and _hf_cached(model, ids.size(1), max_new_tokens, context):
        out = hf_generate(model, ids, max_new_tokens, temperature, top_k, seed, compiled=compiled)
        return tokenizer.decode(out[0].cpu())
    generator = _generator(model, seed)
    if use_cache and has_cache(model):
        out = sample_cached(
            model, ids, max_new_tokens, temperature, top_k, context, generator, compiled=compiled
        )
    else:
        out = sample(model, ids, max_new_tokens, temperature, top_k, context, generator)
    return tokenizer.decode(out[0].cpu())


def generate_texts(
    model: nn.Module,
    tokenizer: TextTokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: int | None = None,
    seed: int | None = None,
) -> list[str]:
    """Several prompts decoded together as one batch (left-padded, KV-cached): each continues as it would
    alone with greedy decoding. Models without a cache (RNN) run the prompts one by one."""
    if not prompts:
        return []
    if not has_cache(model):
        return [
            generate_text(model, tokenizer, p, max_new_tokens, temperature, top_k, context, seed)
            for p in prompts
        ]
    device = next(model.parameters()).device
    rows = [_encode(tokenizer, p, device) for p in prompts]
    longest = max(len(r) for r in rows)
    pad = torch.tensor([longest - len(r) for r in rows], dtype=torch.int64, device=device)  # (B,)
    ids = torch.stack([torch.nn.functional.pad(r, (longest - len(r), 0)) for r in rows])  # (B, T) left-padded
    out = sample_cached(
        model, ids, max_new_tokens, temperature, top_k, context, _generator(model, seed), pad=pad
    )
    return [tokenizer.decode(out[i, int(pad[i]) :].cpu()) for i in range(len(rows))]


def stream_text(
    model: nn.Module,
    tokenizer: TextTokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: int | None = None,
    seed: int | None = None,
    *,
    compiled: bool = False,
) -> Iterator[str]:
    """The prompt, then the generated text piece by piece as tokens come; joined, the pieces are what
    generate_text returns for the same arguments. A token that ends inside a multi-byte character is held
    back until the character is whole (or the end)."""
    device = next(model.parameters()).device
    ids = _encode(tokenizer, prompt, device)
    yield tokenizer.decode(ids.cpu())
    generator, prompt_ids = _generator(model, seed), ids.unsqueeze(0)  # (1, T)
    if _hf_cached(model, prompt_ids.size(1), max_new_tokens, context):
        tokens = hf_stream_tokens(
            model, prompt_ids, max_new_tokens, temperature, top_k, seed, compiled=compiled
        )
    elif has_cache(model):
        tokens = stream_tokens(
            model, prompt_ids, max_new_tokens, temperature, top_k, context, generator, compiled=compiled
        )
    else:  # no cache: one cache-free step per token
        tokens = _uncached_steps(model, prompt_ids, max_new_tokens, temperature, top_k, context, generator)
    new: list[int] = []
    emitted = ""
    for token in tokens:
        new.append(int(token[0, 0]))
        text = tokenizer.decode(new)
        if text.endswith(REPLACEMENT) or not text.startswith(emitted):
            continue  # an unfinished character: wait for its next byte
        yield text[len(emitted) :]
        emitted = text
    text = tokenizer.decode(new)
    if text != emitted:
        yield text[len(emitted) :] if text.startswith(emitted) else text[len(_common_prefix(emitted, text)) :]


def _common_prefix(a: str, b: str) -> str:
    """The longest common prefix of two strings."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _uncached_steps(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    context: int | None,
    generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:
    for _ in range(max_new_tokens):
        step = sample(model, idx, 1, temperature, top_k, context, generator)
        idx = step
        yield step[:, -1:]
