"""The adapter for language models: continue a prompt greedily, attribute each generated token to the prompt
tokens (explanations/generation.py), write the record and the matrix.

runs/<name>/explain/generation/
  attributions.json   the prompt and generated tokens; per generated token, one score per prompt token for
                      each method, its log-probability, and IG's completeness error and steps
  tokens.html         per method, a matrix: generated tokens (rows) x prompt tokens (columns), coloured
"""

from pathlib import Path
from typing import Any

import torch

from behemoth.config import RunConfig
from behemoth.config.explain import ExplainConfig
from behemoth.data.tokenizers import load_run_tokenizer
from behemoth.errors import BehemothError
from behemoth.explanations import pictures
from behemoth.explanations.generation import (
    GENERATION_METHODS,
    CaptumTokenizer,
    GenerationAttributions,
    attribute_generation,
)
from behemoth.files import atomic_write_text
from behemoth.models.sampling import has_cache, sample, sample_cached
from behemoth.runs import ATTRIBUTIONS, RunDir, write_json
from behemoth.training.assembly import load_run_data, load_trained_model

GENERATION_DIR = "generation"
DEFAULT_PROMPT_TOKENS = 24  # the default prompt: this many tokens of the first validation sequence


def default_prompt(cfg: RunConfig, tokenizer: Any, room: int) -> str:
    """The start of the first validation sequence, decoded: a prompt the model has not trained on."""
    data = load_run_data(cfg)
    split = data.splits().get("val") or data.splits()["test"]
    return tokenizer.decode(split.x[0, : max(1, min(DEFAULT_PROMPT_TOKENS, room))])


def greedy(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """(G,) tokens of a greedy continuation of ids (P,), with the model's KV cache where it has one."""
    run = sample_cached if has_cache(model) else sample
    return run(model, ids.unsqueeze(0), max_new_tokens, temperature=0.0)[0, len(ids) :]


def misses(errors: list[float], ecfg: ExplainConfig) -> dict[str, Any]:
    """Generated tokens whose IG row stayed at or above explain.completeness_tol even at max_steps."""
    above = [i for i, error in enumerate(errors) if error >= ecfg.completeness_tol]
    return {
        "tolerance": ecfg.completeness_tol,
        "max_steps": ecfg.max_steps,
        "samples": above,
        "count": len(above),
        "max_error": max((errors[i] for i in above), default=None),
    }


def explain_generation(
    run_dir: Path,
    cfg: RunConfig,
    ecfg: ExplainConfig,
    prompt: str | None,
    max_new_tokens: int,
    methods: tuple[str, ...] = GENERATION_METHODS,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Greedily continue `prompt` (default: the start of the validation text) by `max_new_tokens` tokens and
    attribute each new token to the prompt's tokens with `methods`; write and return the record."""
    run_spec = RunDir(run_dir).spec()
    if run_spec.data.task != "language_model":
        raise BehemothError(f"--prompt: {run_dir} is a {run_spec.data.task} run, not a language model")
    tokenizer = load_run_tokenizer(run_dir)
    token_text = (
        pictures._token_text
        if tokenizer.name == "byte"
        else (lambda t: pictures.visible(tokenizer.decode([t])))
    )
    context = run_spec.data.input_shape[0]
    if max_new_tokens >= context:
        raise BehemothError(
            f"--max-new-tokens {max_new_tokens}: leaves no room for a prompt in the model's {context}-token "
            "context (data.block_size)"
        )
    if prompt is None:
        prompt = default_prompt(cfg, tokenizer, context - max_new_tokens)
    captum_tokenizer = CaptumTokenizer(tokenizer, token_text)
    ids = captum_tokenizer.encode(prompt, return_tensors="pt")[0]  # (P,)
    if len(ids) == 0:
        raise BehemothError("--prompt is empty: give at least one character")
    if len(ids) + max_new_tokens > context:
        raise BehemothError(
            f"--prompt ({len(ids)} tokens) plus --max-new-tokens {max_new_tokens} is longer than the model's "
            f"{context}-token context (data.block_size): shorten one"
        )
    model = load_trained_model(run_dir, cfg).float()
    new = greedy(model, ids, max_new_tokens)  # (G,)
    baseline_id = int(tokenizer.encode(" ")[0])  # a space, as the last-position path uses
    found = attribute_generation(
        model,
        captum_tokenizer,
        prompt,
        new,
        baseline_id,
        methods,
        n_steps=ecfg.n_steps,
        max_steps=ecfg.max_steps,
        tol=ecfg.completeness_tol,
        internal_batch_size=ecfg.internal_batch_size,
    )
    out = out_dir or RunDir(run_dir).explanation(GENERATION_DIR)
    out.mkdir(parents=True, exist_ok=True)
    record = build_record(prompt, ids, new, found, token_text, tokenizer, baseline_id, ecfg, methods)
    heading = f"{' and '.join(methods)}: {len(new)} generated x {len(ids)} prompt tokens"
    if found.ig_errors is not None:
        heading += f" | IG completeness error max {float(found.ig_errors.max()):.2%}"
    page = pictures.generation_matrix(record["prompt_tokens"], record["rows"], list(methods), heading)
    atomic_write_text(out / record["picture"], page)
    write_json(out / ATTRIBUTIONS, record)
    record["out_dir"] = str(out)
    return record


def build_record(
    prompt: str,
    ids: torch.Tensor,
    new: torch.Tensor,
    found: GenerationAttributions,
    token_text: Any,
    tokenizer: Any,
    baseline_id: int,
    ecfg: ExplainConfig,
    methods: tuple[str, ...],
) -> dict[str, Any]:
    rows = []
    for i, token in enumerate(new.tolist()):
        row: dict[str, Any] = {
            "position": i,
            "token_id": token,
            "token": token_text(token),
            "log_prob": float(found.log_probs[i]),
            "baseline_log_prob": float(found.baseline_log_probs[i]),
            "scores": {m: found.scores[m][i].tolist() for m in methods},
        }
        if found.ig_errors is not None and found.ig_steps is not None:
            row["ig_completeness_error"] = float(found.ig_errors[i])
            row["ig_steps"] = int(found.ig_steps[i])
        rows.append(row)
    errors = found.ig_errors.tolist() if found.ig_errors is not None else None
    return {
        "kind": "generation",
        "method": "+".join(methods),
        "methods": list(methods),
        "prompt": prompt,
        "prompt_ids": ids.tolist(),
        "prompt_tokens": [token_text(int(t)) for t in ids.tolist()],
        "generated_ids": new.tolist(),
        "generated_text": tokenizer.decode(new.tolist()),
        "decoding": "greedy",
        "target": "log-probability of each generated token given the prompt and the tokens before it",
        "baseline": f"token {baseline_id} ({token_text(baseline_id)!r}) in place of a prompt token; IG: "
        "from the token-embedding output of an all-baseline prompt",
        "samples": len(rows),
        "rows": rows,
        "ig_completeness_max": max(errors) if errors else None,
        "completeness_misses": misses(errors, ecfg) if errors is not None else None,
        "seconds": found.seconds,
        "picture": "tokens.html",
        "config": ecfg.model_dump(),
    }
