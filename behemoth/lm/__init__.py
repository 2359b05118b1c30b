"""Using trained language models: sampling text from any (B, T) ids -> (B, T, V) logits model, with a KV
cache where the model has one (GPT), batched prompts and streamed output."""

from behemoth.lm.generate import generate_text, generate_texts, stream_text
from behemoth.models.sampling import next_token, sample, sample_cached, stream_tokens

__all__ = [
    "generate_text",
    "generate_texts",
    "next_token",
    "sample",
    "sample_cached",
    "stream_text",
    "stream_tokens",
]
