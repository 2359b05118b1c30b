"""The run directory: where a run's config, data spec, checkpoints, metrics and results live.

runs/<name>/
  config.toml        fully resolved config
  spec.json          data spec + class names + normalisation (enough to rebuild the model and predict)
  checkpoints/       step-NNNNNNNN/{model.safetensors,state.pt} and `latest`
  model.safetensors  final weights
  metrics.jsonl      train and eval records
  tb/                TensorBoard event files
  summary.json       what training did (steps, time, speed, memory, test metrics)
  eval.json          `behemoth evaluate` output
"""

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from behemoth.config import RunConfig, dump_config, load_config
from behemoth.errors import RunDirError
from behemoth.files import atomic_write_text
from behemoth.spec import DataSpec


def run_path(cfg: RunConfig) -> Path:
    return Path(cfg.runs_dir) / cfg.name


def create_run_dir(path: Path, overwrite: bool) -> Path:
    """Make an empty run directory; an existing one is replaced only with overwrite."""
    if path.exists():
        if not overwrite:
            raise RunDirError(
                f"run directory {path} exists: pass --overwrite, or pick another name (name=...)"
            )
        if path.is_dir() and not (path / "config.toml").exists() and any(path.iterdir()):
            raise RunDirError(f"{path} is not a behemoth run (no config.toml): refusing to delete it")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.mkdir(parents=True)
    return path


def write_config(path: Path, cfg: RunConfig) -> None:
    atomic_write_text(path / "config.toml", dump_config(cfg))


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_spec(path: Path, spec: DataSpec, class_names: list[str], meta: dict[str, Any]) -> None:
    plain_meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    write_json(path / "spec.json", {"spec": asdict(spec), "class_names": class_names, "meta": plain_meta})


def read_spec(path: Path) -> tuple[DataSpec, list[str], dict[str, Any]]:
    raw = json.loads((path / "spec.json").read_text())
    spec = raw["spec"]
    return (
        DataSpec(spec["task"], tuple(spec["input_shape"]), spec["num_classes"]),
        raw["class_names"],
        raw["meta"],
    )


def open_run(path: str | Path, overrides: list[str] | None = None) -> tuple[Path, RunConfig]:
    """An existing run's directory and config (with optional overrides)."""
    path = Path(path)
    if not (path / "config.toml").is_file():
        raise RunDirError(f"{path} is not a behemoth run directory (no config.toml)")
    return path, load_config(path / "config.toml", overrides)
