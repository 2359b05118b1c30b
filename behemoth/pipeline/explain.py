"""`behemoth.explain(run)`: attributions for a trained run's samples, with pictures and fidelity figures."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from behemoth.config.explain import METHODS
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
) -> dict[str, Any]:
    """Attribute `samples` predictions of a run with `method` (default: its [explain] section); with `packed`
    (or `compressed`: <run>/compressed/model.bhm) the compressed model instead. Returns the record written to
    <run>/explain/<method>/attributions.json."""
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
