"""The compression table's rows: each step's model written as a .bhm, reloaded, and measured from the file
(bytes on disk, accuracy of the reloaded model), so every figure is what the artifact really holds."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from behemoth.compression.measure import accuracy, summary_row
from behemoth.compression.pack import load_packed, save_packed
from behemoth.compression.rebuild import shapes_of, to_packed
from behemoth.config import RunConfig
from behemoth.data.bundle import TensorSplit
from behemoth.runs import read_spec

Say = Callable[[str], None]


class Recorder:
    """Writes each step's .bhm, reloads it, and measures the reloaded model: one table row per step."""

    def __init__(
        self, cfg: RunConfig, run_dir: Path, test: TensorSplit, steps_dir: Path, say: Say, split: str = "test"
    ) -> None:
        self.cfg, self.test, self.steps_dir, self.say, self.split = cfg, test, steps_dir, say, split
        self.spec, self.class_names, meta = read_spec(run_dir)
        self.meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list))}
        self.rows: list[dict[str, Any]] = []
        self.models: dict[str, nn.Module] = {}
        self.baseline_bytes = 0

    def baseline(self, model: nn.Module, weights_file: Path) -> None:
        self.baseline_bytes = weights_file.stat().st_size
        self.rows.append(
            summary_row(
                "baseline", model, weights_file, self.baseline_bytes, accuracy(model, self.test, self.spec)
            )
        )
        self.models["baseline"] = model
        self.say(f"baseline: {self.baseline_bytes:,} bytes, {self.split} accuracy {self.rows[0]['acc']:.4f}")

    def step_path(self, step: str) -> Path:
        return self.steps_dir / f"{len(self.rows):02d}-{step}.bhm"

    def record(
        self,
        step: str,
        model: nn.Module,
        code: str = "none",
        path: Path | None = None,
        codebooks: dict | None = None,
        float_model: nn.Module | None = None,
    ) -> None:
        cc, path = self.cfg.compress, path or self.step_path(step)
        packed = to_packed(
            model,
            self.cfg.model.name,
            self.cfg.model.options,
            self.spec,
            shapes=shapes_of(float_model if float_model is not None else model),
            codebooks=codebooks,
            engine_name=cc.engine,
            per_channel=cc.per_channel,
            class_names=self.class_names,
            meta=self.meta,
        )
        save_packed(path, packed, code)
        reloaded = load_packed(path)  # every row is measured on what the file holds
        self.rows.append(
            summary_row(
                step,
                reloaded,
                path,
                self.baseline_bytes,
                accuracy(reloaded, self.test, self.spec),
                {"runtime": packed.runtime, "code": code},
            )
        )
        self.models[step] = reloaded
        row = self.rows[-1]
        self.say(
            f"{step}: {row['bytes']:,} bytes ({row['compression']:.1f}x), "
            f"{self.split} accuracy {row['acc']:.4f}"
        )
