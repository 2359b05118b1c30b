"""`behemoth.compress(run, recipe)` and `behemoth.distill(cfg)`: the compression stage on trained runs."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from behemoth.compression.distill_run import distill_run
from behemoth.compression.pipeline import CompressResult, compress_run
from behemoth.config import RunConfig
from behemoth.errors import ConfigError, RunDirError
from behemoth.pipeline.config import config_with_section
from behemoth.runs import RunDir, open_run, run_path


def recipe_overrides(recipe: str | None) -> list[str]:
    """`prune=0.92,quant=kmeans6` -> ["compress.prune=0.92", "compress.quant=kmeans6"]."""
    if not recipe:
        return []
    out = []
    for part in (p.strip() for p in recipe.split(",")):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(
                f"--recipe {recipe!r}: {part!r} is not key=value (e.g. prune=0.92,quant=kmeans6)"
            )
        out.append(f"compress.{key.strip()}={value.strip()}")
    return out


def compress_config(
    run: str | Path, recipe: str | None = None, overrides: list[str] | None = None, config: Path | None = None
) -> tuple[Path, RunConfig]:
    """The run's config, with [compress] from `config`, then dotted overrides, then `recipe`."""
    run_dir, _ = open_run(run)  # checks it is a run
    return run_dir, config_with_section(
        RunDir(run_dir).config_file, "compress", config, list(overrides or []) + recipe_overrides(recipe)
    )


def compress(
    run: str | Path,
    recipe: str | None = None,
    overrides: list[str] | None = None,
    *,
    config: Path | None = None,
    say: Callable[[str], None] = lambda text: None,
    progress: bool = False,
    latency: bool = True,
) -> CompressResult:
    """Prune, quantize, share and code a trained run's weights as its [compress] section (with `recipe`,
    e.g. "prune=0.9,quant=int8") says; writes a .bhm and compress.json, returns the before/after table."""
    run_dir, cfg = compress_config(run, recipe, overrides, config)
    return compress_run(run_dir, cfg, say=say, show_progress=progress, measure_latency=latency)


def distill(cfg: RunConfig, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train cfg's student against the teacher run compress.teacher; returns the summary it writes."""
    if cfg.compress.teacher is None:
        raise ConfigError("compress.teacher is not set: pass --teacher RUN_DIR")
    open_run(cfg.compress.teacher)  # a clear error if it is not a run
    if run_path(cfg).exists() and not overwrite:
        raise RunDirError(
            f"run directory {run_path(cfg)} exists: pass --overwrite, or pick another name (name=...)"
        )
    return distill_run(cfg, overwrite=overwrite, progress=progress)
