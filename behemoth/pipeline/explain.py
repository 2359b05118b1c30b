"""`behemoth.explain(run)`: attributions for a trained run's samples, with pictures and fidelity figures."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from behemoth.config.explain import GENERATION_METHODS, METHODS
from behemoth.errors import BehemothError
from behemoth.runs import RunDir, open_run


def explain(
    run: str | Path,
    overrides: list[str] | None = None,
    *,
    method: str | None = None,
    samples: int | None = None,
    target: str | None = None,
    split: str | None = None,
    packed: Path | None = None,
    compressed: bool = False,
    progress: Callable[[int, int], None] | None = None,
    prompt: str | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Attribute `samples` predictions of a run with `method` (default: its [explain] section); with `packed`
    (or `compressed`: <run>/compressed/model.bhm) the compressed model instead. Returns the record written to
    <run>/explain/<method>/attributions.json.

    Language models, with `prompt` or `max_new_tokens`: continue the prompt (default: the start of the
    validation text) greedily by `max_new_tokens` (default 8) tokens and attribute each generated token to
    the prompt's tokens (feature ablation and IG, or `method`); written to <run>/explain/generation/."""
    if prompt is not None or max_new_tokens is not None:
        return _explain_generation(run, overrides, method, prompt, max_new_tokens or 8, packed, compressed)
    if method is not None and method not in METHODS:
        raise BehemothError(f"--method {method}: unknown method; known: {', '.join(METHODS)}")
    flags = {"method": method, "samples": samples, "target": target, "split": split}
    extra = [
        f"explain.{key}={value!r}" if isinstance(value, str) else f"explain.{key}={value}"
        for key, value in flags.items()
        if value is not None
    ]
    run_dir, cfg = open_run(run, list(overrides or []) + extra)
    if compressed and packed is None:
        packed = RunDir(run_dir).artifact
        if not packed.is_file():
            raise BehemothError(f"{packed} not found: compress the run first (behemoth compress {run_dir})")
    from behemoth.explanations.run import explain_run  # torch and captum load only when it runs

    return explain_run(run_dir, cfg, cfg.explain, progress, packed=packed)


def _explain_generation(
    run: str | Path,
    overrides: list[str] | None,
    method: str | None,
    prompt: str | None,
    max_new_tokens: int,
    packed: Path | None,
    compressed: bool,
) -> dict[str, Any]:
    if packed is not None or compressed:
        raise BehemothError("--prompt explains the run's own weights: drop --packed/--compressed")
    if method is not None and method not in GENERATION_METHODS:
        raise BehemothError(
            f"--method {method}: with --prompt, use one of {', '.join(GENERATION_METHODS)} (default: both)"
        )
    if max_new_tokens < 1:
        raise BehemothError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    run_dir, cfg = open_run(run, list(overrides or []))
    from behemoth.explanations.generation_run import explain_generation  # torch and captum load only now

    methods = (method,) if method is not None else GENERATION_METHODS
    return explain_generation(run_dir, cfg, cfg.explain, prompt, max_new_tokens, methods)
