"""Which prompt tokens drove each generated token: Captum's LLM attribution on a greedy generation.

`attribute_generation(model, tokenizer, prompt_ids, new_ids)` scores every prompt token for every generated
token with
  feature_ablation  Captum `LLMAttribution(FeatureAblation)`: log p(token) minus the same with that prompt
                    token replaced by the baseline token (one forward pass per prompt token);
  ig                Captum `LLMGradientAttribution(LayerIntegratedGradients)` on the token-embedding output,
                    from the embeddings of an all-baseline prompt; each row should add up to the change in
                    log p(token) (completeness), which is measured and reported per generated token.
The target of generated token i is log p(new_i | prompt, new_<i): the earlier generated tokens stay as they
were generated in every perturbed input. Any behemoth language model (ids (B, T) -> logits (B, T, V): the
zoo's GPT, a Hugging Face causal LM) works through two small adapters to the Hugging Face conventions Captum
expects (a `.logits` output; a tokenizer with encode/decode/convert_ids_to_tokens).
"""

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from behemoth.config.explain import GENERATION_METHODS
from behemoth.explanations.fidelity import EPS

__all__ = ["GENERATION_METHODS", "attribute_generation"]


class CaptumLM(nn.Module):
    """A behemoth language model with Hugging Face's call convention: `forward(input_ids, ...)` returns an
    object with `.logits` (B, T, V). Captum's LLM classes call models this way."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any):
        # attention_mask: Captum passes all ones (no padding), which is what a plain forward computes
        return SimpleNamespace(logits=self.model(input_ids))  # (B, T, V)


class CaptumTokenizer:
    """behemoth's TextTokenizer (bytes, BPE, a Hugging Face tokenizer.json) as the tokenizer Captum expects.

    `token_text` turns one id into the text shown for it."""

    def __init__(self, tokenizer: Any, token_text: Callable[[int], str]):
        self.tokenizer, self.token_text = tokenizer, token_text

    def encode(self, text: str, add_special_tokens: bool = True, return_tensors: str | None = None):
        ids = [int(i) for i in self.tokenizer.encode(text)]
        return torch.tensor([ids], dtype=torch.int64) if return_tensors == "pt" else ids

    def decode(self, token_ids: Any) -> str:
        ids = token_ids.reshape(-1).tolist() if isinstance(token_ids, torch.Tensor) else token_ids
        return self.tokenizer.decode([int(ids)] if isinstance(ids, int) else [int(i) for i in ids])

    def convert_ids_to_tokens(self, token_ids: int | list[int]) -> str | list[str]:
        if isinstance(token_ids, int):
            return self.token_text(token_ids)
        return [self.token_text(int(i)) for i in token_ids]

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        ids = [int(self.tokenizer.encode(t)[0]) for t in ([tokens] if isinstance(tokens, str) else tokens)]
        return ids[0] if isinstance(tokens, str) else ids

    def __call__(self, text: str, return_offsets_mapping: bool = False, **_: Any) -> dict[str, list]:
        """ids and character offsets (Captum's pretty output tokens read them); offsets from decoding each
        prefix, so a token that ends inside a character gets an approximate span."""
        ids = self.encode(text)
        ends = [len(self.tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]
        starts = [0, *ends[:-1]]
        return {"input_ids": ids, "offset_mapping": list(zip(starts, ends))}


def embedding_layer(model: nn.Module) -> nn.Module:
    """The token-embedding layer whose output IG attributes to: the zoo GPT's `tok_emb`, or a Hugging Face
    model's input embeddings."""
    if getattr(model, "tok_emb", None) is not None:
        return model.tok_emb
    hf = getattr(model, "hf", None)
    if hf is not None and callable(getattr(hf, "get_input_embeddings", None)):
        return hf.get_input_embeddings()
    raise ValueError(f"{type(model).__name__} has no token embedding (tok_emb, or a Hugging Face model's)")


@torch.no_grad()
def target_log_probs(model: nn.Module, prompt: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """(G,) log p(new_i | prompt, new_<i) in one forward pass; prompt (P,), new (G,) int64."""
    ids = torch.cat([prompt, new]).unsqueeze(0)  # (1, P + G)
    logits = model(ids)[0, len(prompt) - 1 : -1].double()  # (G, V): the predictions of new_0..new_G-1
    return torch.log_softmax(logits, -1).gather(1, new.unsqueeze(1))[:, 0]


@dataclass
class GenerationAttributions:
    scores: dict[str, torch.Tensor]  # method -> (G, P): generated token x prompt token
    log_probs: torch.Tensor  # (G,) of the generated tokens
    baseline_log_probs: torch.Tensor  # (G,) with every prompt token the baseline
    ig_errors: torch.Tensor | None  # (G,) |sum of IG row - (log p - baseline log p)| / |difference|
    ig_steps: torch.Tensor | None  # (G,) IG steps used per generated token
    seconds: dict[str, float]


def _feature_ablation(lm: CaptumLM, tok: CaptumTokenizer, inp, new: torch.Tensor) -> torch.Tensor:
    from captum.attr import FeatureAblation, LLMAttribution

    # forward_in_tokens=False: prompt and generated tokens in one forward pass per ablation; for a causal
    # model without a cache this is exactly the token-by-token forward, at 1/G of the cost
    result = LLMAttribution(FeatureAblation(lm), tok).attribute(
        inp, target=new, use_cached_outputs=False, forward_in_tokens=False
    )
    return result.token_attr.detach().double()  # (G, P)


def _integrated_gradients(lm: CaptumLM, tok: CaptumTokenizer, inp, new, n_steps, batch) -> torch.Tensor:
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution

    layer = embedding_layer(lm.model)
    # Captum's return_convergence_delta cannot pass through LLMGradientAttribution (it detaches the method's
    # output, a tuple with the delta): completeness is measured from the end points instead
    result = LLMGradientAttribution(LayerIntegratedGradients(lm, layer), tok).attribute(
        inp, target=new, n_steps=n_steps, internal_batch_size=batch
    )
    return result.token_attr.detach().double()  # (G, P)


def attribute_generation(
    model: nn.Module,
    tokenizer: CaptumTokenizer,
    prompt: str,
    new: torch.Tensor,
    baseline_id: int,
    methods: tuple[str, ...] = GENERATION_METHODS,
    *,
    n_steps: int = 32,
    max_steps: int = 512,
    tol: float = 0.01,
    internal_batch_size: int = 512,
) -> GenerationAttributions:
    """Scores (G, P) of the prompt's P tokens for each of the G tokens in `new` (generated after `prompt`).

    IG doubles its steps (n_steps, 2 n_steps, ... max_steps) until every row's completeness error is below
    `tol`; each row keeps the first result under `tol` (or the max_steps one, which the record flags).
    """
    from captum.attr import TextTokenInput

    unknown = set(methods) - set(GENERATION_METHODS)
    if unknown:
        raise ValueError(f"unknown method {sorted(unknown)}; known: {', '.join(GENERATION_METHODS)}")
    lm = CaptumLM(model).eval()
    inp = TextTokenInput(prompt, tokenizer, baselines=baseline_id)
    prompt_ids = inp.inp_tensor[0]  # (P,)
    log_probs = target_log_probs(model, prompt_ids, new)  # (G,)
    baseline_log_probs = target_log_probs(model, torch.full_like(prompt_ids, baseline_id), new)
    scores, seconds = {}, {}
    ig_errors = ig_steps = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Pretty tokens|Skipping this token|gradients).*")
        if "feature_ablation" in methods:
            started = time.perf_counter()
            scores["feature_ablation"] = _feature_ablation(lm, tokenizer, inp, new)
            seconds["feature_ablation"] = time.perf_counter() - started
        if "ig" in methods:
            started = time.perf_counter()
            gap = log_probs - baseline_log_probs  # (G,)
            steps, best, ig_errors = n_steps, None, None
            ig_steps = torch.zeros(len(new), dtype=torch.long)
            while True:
                attr = _integrated_gradients(lm, tokenizer, inp, new, steps, internal_batch_size)
                errors = (attr.sum(1) - gap).abs() / gap.abs().clamp_min(EPS)  # (G,)
                if best is None:
                    best, ig_errors, ig_steps[:] = attr, errors, steps
                else:  # rows still above tolerance take the finer result
                    redo = ig_errors >= tol
                    best[redo], ig_errors[redo], ig_steps[redo] = attr[redo], errors[redo], steps
                if bool((ig_errors < tol).all()) or steps * 2 > max_steps:
                    break
                steps *= 2
            scores["ig"] = best
            seconds["ig"] = time.perf_counter() - started
    return GenerationAttributions(scores, log_probs, baseline_log_probs, ig_errors, ig_steps, seconds)
