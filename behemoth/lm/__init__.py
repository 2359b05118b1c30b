"""Using trained language models: sampling text from any (B, T) ids -> (B, T, V) logits model."""

from behemoth.lm.generate import generate_text
from behemoth.models.sampling import next_token, sample

__all__ = ["generate_text", "next_token", "sample"]
