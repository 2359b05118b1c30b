"""The run directory: where a run's config, data spec, checkpoints, metrics and results live.

`RunDir` is the only code that knows the names of the files inside a run:

runs/<name>/
  config.toml        fully resolved config
  spec.json          data spec, class names, preprocessing, tokenizer reference, description of the data
  tokenizer.json     a trained (BPE) tokenizer
  checkpoints/       step-NNNNNNNN/{model.safetensors,state.pt} and `latest`
  model.safetensors  final weights (a LoRA run's: its adapters only)
  adapter/           a LoRA run's adapters in peft's format (adapter_config.json, adapter_model.safetensors)
  metrics.jsonl      train and eval records
  tb/                TensorBoard event files
  data_preview.png   training images as the model sees them
  summary.json       what training did (steps, time, speed, memory, test metrics)
  eval.json          `behemoth evaluate` output
  explain/<method>/  `behemoth explain` output
  compressed/        `behemoth compress` output (model.bhm, compress.json, steps/)
  export/            `behemoth export` output
  report/            `behemoth report` output
"""

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from behemoth.config import RunConfig, dump_config, load_config
from behemoth.errors import RunDirError
from behemoth.files import atomic_write_text
from behemoth.spec import DEFAULT_TOKENIZER_FILE, DataSpec, Preprocessing, TokenizerRef

ATTRIBUTIONS = "attributions.json"  # in each explain/<method>/ directory
COMPRESS_RECORD = "compress.json"  # beside the compressed artifact
TUNE_FILES = ("study.sqlite3", "trials.csv", "best.toml", "best.json", "history.png", "importances.png")


@dataclass(frozen=True)
class RunSpec:
    """spec.json, typed: enough to rebuild the model, preprocess new inputs and decode tokens."""

    data: DataSpec
    class_names: list[str]
    preprocessing: Preprocessing | None  # classification inputs; None for token ids
    tokenizer: TokenizerRef | None  # language models; None for classifiers
    meta: dict[str, Any]  # the rest: a plain description of the data (source, splits, feature names, ...)


@dataclass(frozen=True)
class RunDir:
    """A run directory and the names of everything in it."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def spec_file(self) -> Path:
        return self.path / "spec.json"

    @property
    def tokenizer_file(self) -> Path:
        return self.path / DEFAULT_TOKENIZER_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def adapter_dir(self) -> Path:
        """[train.lora]: the adapters as peft saves them (PeftModel.from_pretrained loads this folder)."""
        return self.path / "adapter"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def preview(self) -> Path:
        return self.path / "data_preview.png"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def evaluation(self) -> Path:
        return self.path / "eval.json"

    @property
    def generations(self) -> Path:
        """Samples of text from this run and the runs it came from (`behemoth demo --lm` writes it)."""
        return self.path / "generations.json"

    @property
    def explanations(self) -> Path:
        return self.path / "explain"

    @property
    def compressed(self) -> Path:
        return self.path / "compressed"

    @property
    def artifact(self) -> Path:
        """The compressed model `behemoth compress` writes by default."""
        return self.compressed / "model.bhm"

    def packed_evaluation(self, packed: Path) -> Path:
        """Where `behemoth evaluate RUN --packed FILE.bhm` writes (eval.json stays the run's own)."""
        return self.compressed / f"eval-{Path(packed).stem}.json"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def compress_record(self) -> Path:
        """compress.json: the before/after table `behemoth compress` wrote."""
        return self.compressed / COMPRESS_RECORD

    def explanation(self, name: str) -> Path:
        """explain/<method>/ (or <method>-compressed/)."""
        return self.explanations / name

    def explanation_records(self) -> list[Path]:
        """Every explain/<name>/attributions.json, sorted."""
        return sorted(self.explanations.glob(f"*/{ATTRIBUTIONS}"))

    @property
    def exported_weights(self) -> Path:
        return self.export_dir / "model.safetensors"

    @property
    def report_html(self) -> Path:
        return self.report_dir / "report.html"

    @property
    def report_summary(self) -> Path:
        return self.report_dir / "summary.json"

    @property
    def federated(self) -> Path:
        """A federated run's round checkpoints; in the demo's run, the nested federated run."""
        return self.path / "federated"

    @property
    def federate_log(self) -> Path:
        return self.path / "federate.log"

    @property
    def deploy_logs(self) -> Path:
        return self.path / "deploy"

    def tune_file(self, name: str) -> Path:
        """A tune study's files (TUNE_FILES): study, trials, best config and figures, plots."""
        if name not in TUNE_FILES:
            raise ValueError(f"{name!r} is not a tune study file ({', '.join(TUNE_FILES)})")
        return self.path / name

    @property
    def is_run(self) -> bool:
        return self.config_file.is_file()

    @property
    def has_weights(self) -> bool:
        return self.weights.is_file() or self.checkpoints.is_dir()

    def config(self, overrides: list[str] | None = None) -> RunConfig:
        if not self.is_run:
            raise RunDirError(f"{self.path} is not a behemoth run directory (no config.toml)")
        return load_config(self.config_file, overrides)

    def spec(self) -> RunSpec:
        if not self.spec_file.is_file():
            raise RunDirError(f"{self.path} has no spec.json: not a behemoth run")
        raw = json.loads(self.spec_file.read_text())
        spec, meta = raw["spec"], raw.get("meta", {})
        data = DataSpec(spec["task"], tuple(spec["input_shape"]), spec["num_classes"])
        try:
            preprocessing, tokenizer = Preprocessing.from_meta(meta), TokenizerRef.from_meta(meta)
        except (ValueError, TypeError) as exc:
            raise RunDirError(f"{self.spec_file}: {exc}") from None
        return RunSpec(data, raw.get("class_names", []), preprocessing, tokenizer, meta)

    def write_config(self, cfg: RunConfig) -> None:
        atomic_write_text(self.config_file, dump_config(cfg))

    def write_spec(self, spec: DataSpec, class_names: list[str], meta: dict[str, Any]) -> None:
        plain_meta = {
            k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list, type(None)))
        }
        write_json(self.spec_file, {"spec": asdict(spec), "class_names": class_names, "meta": plain_meta})


def run_path(cfg: RunConfig) -> Path:
    return Path(cfg.runs_dir) / cfg.name


def create_run_dir(path: Path, overwrite: bool) -> Path:
    """Make an empty run directory; an existing one is replaced only with overwrite."""
    if path.exists():
        if not overwrite:
            raise RunDirError(
                f"run directory {path} exists: pass --overwrite, or pick another name (name=...)"
            )
        if path.is_dir() and not RunDir(path).is_run and any(path.iterdir()):
            raise RunDirError(f"{path} is not a behemoth run (no config.toml): refusing to delete it")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.mkdir(parents=True)
    return path


def write_config(path: Path, cfg: RunConfig) -> None:
    RunDir(path).write_config(cfg)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def write_spec(path: Path, spec: DataSpec, class_names: list[str], meta: dict[str, Any]) -> None:
    RunDir(path).write_spec(spec, class_names, meta)


def read_spec(path: Path) -> tuple[DataSpec, list[str], dict[str, Any]]:
    run_spec = RunDir(path).spec()
    return run_spec.data, run_spec.class_names, run_spec.meta


def open_run(path: str | Path, overrides: list[str] | None = None) -> tuple[Path, RunConfig]:
    """An existing run's directory and config (with optional overrides)."""
    path = Path(path)
    return path, RunDir(path).config(overrides)
