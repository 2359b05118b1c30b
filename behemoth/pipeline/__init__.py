"""The public Python API: one function per stage, each what the matching `behemoth` command runs.

    import behemoth
    cfg = behemoth.load_config("digits", ["train.epochs=2"])
    summary = behemoth.train(cfg)
    metrics = behemoth.evaluate(summary["run"])

This package sits above every stage (layering in ../shared/STYLE.md): it reads configs and run
directories, calls the stages, and returns plain results; the CLI only parses arguments and prints them.
"""

from pathlib import Path
from typing import Any

from behemoth.config import RunConfig
from behemoth.distributed import DistEnv
from behemoth.models import trust_code
from behemoth.pipeline.compress import compress, distill
from behemoth.pipeline.config import load_run_config, resolve_config
from behemoth.pipeline.data import preview
from behemoth.pipeline.demo import demo
from behemoth.pipeline.demo_lm import demo_lm
from behemoth.pipeline.evaluate import evaluate, predict
from behemoth.pipeline.explain import explain
from behemoth.pipeline.federate import federate, partition_view
from behemoth.pipeline.lm import export, generate, generate_stream
from behemoth.pipeline.plan import FinetunePlan, plan
from behemoth.pipeline.report import report
from behemoth.pipeline.train import run_training
from behemoth.pipeline.tune import lr_find, tune

__all__ = [
    "compress",
    "demo",
    "demo_lm",
    "distill",
    "evaluate",
    "explain",
    "FinetunePlan",
    "export",
    "federate",
    "generate",
    "generate_stream",
    "load_config",
    "lr_find",
    "partition_view",
    "plan",
    "predict",
    "preview",
    "report",
    "resolve_config",
    "run_training",
    "train",
    "trust_code",
    "tune",
]


def load_config(config: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A run config from a TOML file or a shipped recipe name (e.g. "mnist-cnn"), with dotted overrides."""
    return load_run_config(config, overrides)


def train(
    cfg: RunConfig | str | Path,
    overrides: list[str] | None = None,
    *,
    overwrite: bool = False,
    resume: Path | None = None,
    progress: bool = True,
    env: DistEnv | None = None,
) -> dict[str, Any]:
    """Train into runs/<name> (or continue the run `resume`); returns summary.json's contents.

    `cfg` is a RunConfig, or a config file / recipe name read with `overrides`."""
    if not isinstance(cfg, RunConfig):
        cfg = load_run_config(cfg, overrides)
    return run_training(cfg, overwrite=overwrite, resume=resume, progress=progress, env=env)
