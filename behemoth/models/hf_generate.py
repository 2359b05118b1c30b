"""Generation for Hugging Face causal LMs (`model.name = "hf"`) with transformers' `generate` and KV cache.

The semantics are behemoth's sampling (behemoth.models.sampling) so that every model generates alike:
exactly `max_new_tokens` tokens (the model's end-of-sequence token does not stop it), temperature 0 (or
top_k 1) greedy, top_k among the data's vocabulary only (a model whose embedding is padded past its
tokenizer never emits the padding ids). transformers draws from torch's global generator (its `generate` takes
no torch.Generator), so a seed is applied inside `torch.random.fork_rng`: the same seed gives the same text
and the caller's random state is left as it was.
"""

import queue
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch

from behemoth.models.compiled_decode import compiled_hf_forward
from behemoth.models.hf import HFCausalLM
from behemoth.models.sampling import check_sampling

_DONE = object()


def is_hf_causal(model: Any) -> bool:
    return isinstance(model, HFCausalLM)


def _vocab_limit(vocab_size: int) -> Any:
    """A logits processor that keeps the first `vocab_size` ids (the data's vocabulary)."""
    from transformers import LogitsProcessor

    class VocabLimit(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if scores.size(-1) > vocab_size:
                scores = scores.clone()
                scores[:, vocab_size:] = float("-inf")  # (B, V_model): padding ids never drawn
            return scores

    return VocabLimit()


def _generate_kwargs(model: HFCausalLM, max_new_tokens: int, temperature: float, top_k: int | None) -> dict:
    from transformers import LogitsProcessorList

    check_sampling(temperature, top_k)
    greedy = temperature == 0 or top_k == 1
    sampling = {} if greedy else {"temperature": temperature, "top_k": top_k or 0, "top_p": 1.0}
    return {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": 0,
        "do_sample": not greedy,
        **sampling,
        "use_cache": True,
        "eos_token_id": [],  # no early stop: every model generates max_new_tokens
        "pad_token_id": 0,  # one unpadded row at a time: never used, but generate wants one
        "logits_processor": LogitsProcessorList([_vocab_limit(model.vocab_size)]),
    }


def hf_generate(
    model: HFCausalLM,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    streamer: Any = None,
    *,
    compiled: bool = False,
) -> torch.Tensor:
    """(B, T) ids -> (B, T + max_new_tokens): transformers' `generate`, with its KV cache. `compiled`: its
    static cache, and each one-token step through behemoth's compiled forward (models/compiled_decode.py)."""
    kwargs = _generate_kwargs(model, max_new_tokens, temperature, top_k)
    if compiled:
        # transformers' own compile of a static-cache generate is for GPUs (CUDA graphs): ours is set up
        # for CPU decoding, so its own is off
        kwargs |= {"cache_implementation": "static", "disable_compile": True}
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[idx.device] if idx.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            with compiled_hf_forward(model.hf) if compiled else nullcontext():
                return model.hf.generate(
                    input_ids=idx, attention_mask=torch.ones_like(idx), streamer=streamer, **kwargs
                )
    finally:
        model.train(was_training)


class _TokenQueue:
    """A transformers streamer (put/end) that hands each new token to the reading thread."""

    def __init__(self) -> None:
        self.tokens: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate puts the prompt first
            self.prompt_seen = True
            return
        self.tokens.put(value.reshape(-1, 1).cpu())  # (B, 1)

    def end(self) -> None:
        self.tokens.put(_DONE)


def hf_stream_tokens(
    model: HFCausalLM,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    *,
    compiled: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield each new (B, 1) id of `hf_generate` as transformers produces it (generate runs in a thread and
    hands tokens over through a streamer; an error in it is raised here)."""
    streamer = _TokenQueue()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            hf_generate(model, idx, max_new_tokens, temperature, top_k, seed, streamer, compiled=compiled)
        except BaseException as exc:  # handed to the reading thread, which raises it
            failure.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    while (token := streamer.tokens.get()) is not _DONE:
        yield token
    worker.join()
    if failure:
        raise failure[0]
