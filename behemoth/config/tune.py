"""The `[tune]` config section: what to search, for which objective, with which pruner.

Kept free of torch and optuna so loading any config stays light. The search space is checked here,
when the config loads: every entry must be a known kind with a well-formed range, at a real config path.

    [tune.space]
    "train.lr" = {log_uniform = [1e-4, 1.0]}
    "train.optimizer" = {choice = ["sgd", "adam"]}

Unquoted dotted keys (`train.lr = {...}`) read as nested TOML tables; both forms are accepted.
"""

import difflib
import math
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from behemoth.config.section import Section
from behemoth.errors import ConfigError

RANGE_KINDS = ("log_uniform", "uniform", "int", "log_int")
KINDS = (*RANGE_KINDS, "choice")
STORAGE_SCHEMES = ("postgresql://", "postgresql+psycopg://", "sqlite:///")


class TuneConfig(Section):
    trials: int = Field(20, ge=1)  # total trials in the study (a resumed study runs the rest)
    timeout: float | None = Field(None, gt=0)  # seconds for this invocation; None: no limit
    objective: Literal["val.acc", "val.loss"] = "val.acc"  # the validation metric to optimise
    direction: Literal["maximize", "minimize"] | None = None  # None: maximize acc, minimize loss
    pruner: Literal["median", "hyperband", "none"] = "median"  # stop bad trials early, per epoch
    startup_trials: int = Field(3, ge=0)  # median: never prune before this many trials finished
    warmup_epochs: int = Field(1, ge=0)  # median: never prune before this many epochs of a trial
    seed: int = 0  # TPE sampler seed
    # None: study.sqlite3 in the run directory. A database URL (postgresql://user@host:5432/db; keep the
    # password in PGPASSWORD or ~/.pgpass, not here) lets several `behemoth tune` workers share one study
    storage: str | None = None
    heartbeat: int = Field(10, ge=1)  # seconds; a running trial silent for 2x this is failed and retried
    space: dict[str, dict[str, Any]] = {}  # "section.key" = {kind = ...}: what to search

    @field_validator("storage")
    @classmethod
    def _database_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(STORAGE_SCHEMES):
            raise ValueError(f"expected a database URL starting with {' or '.join(STORAGE_SCHEMES)}")
        return url

    @property
    def resolved_direction(self) -> str:
        if self.direction is not None:
            return self.direction
        return "maximize" if self.objective == "val.acc" else "minimize"

    @field_validator("space", mode="before")
    @classmethod
    def _check_space(cls, raw: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(raw, dict):
            raise ConfigError(f'tune.space = {raw!r}: expected a table of "section.key" = {{kind = ...}}')
        space = flatten_space(raw)
        for key, spec in space.items():
            check_spec(key, spec)
        return space


def flatten_space(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": {"log_uniform": [..]}}} and {"train.lr": {...}} both -> {"train.lr": {...}}.

    A table is a leaf (one parameter) when it holds a kind or any non-table value; else it nests.
    """
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else key
        nested = (
            isinstance(value, dict)
            and value
            and not set(value) & set(KINDS)
            and all(isinstance(v, dict) for v in value.values())
        )
        flat.update(flatten_space(value, path) if nested else {path: value})
    return flat


def check_spec(key: str, spec: Any) -> None:
    """One parameter's spec: exactly one kind, with [low, high] or a non-empty list of choices."""
    where = f"tune.space.{key} = {spec!r}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected one of {{{' | '.join(f'{k} = ...' for k in KINDS)}}}")
    kind, value = next(iter(spec.items()))
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r} (use {', '.join(KINDS)})")
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: choice needs a non-empty list of values")
        return
    is_int = kind in ("int", "log_int")
    number = int if is_int else (int, float)
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, number) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and value[0] < value[1]
    )
    if ok and kind.startswith("log"):
        ok = value[0] > 0
    if not ok:
        bound = "0 < low < high" if kind.startswith("log") else "low < high"
        what = "integers" if is_int else "numbers"
        raise ConfigError(f"{where}: {kind} needs [low, high], {what} with {bound}")


def check_config_path(root: type[BaseModel], key: str, spec: dict[str, Any]) -> None:
    """The key must name a field of the run config `root` (a [model] option is checked when a value is tried).

    RunConfig calls this once it is built: this module cannot import the schema that imports it."""
    model: Any = root
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            break
        if part not in fields:
            if model.model_config.get("extra") == "allow" and depth == len(parts) - 1:
                return  # [model] takes the chosen model's own options
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(fields))})"
            section = ".".join(parts[:depth]) or "the config"
            raise ConfigError(f"tune.space.{key} = {spec!r}: {section} has no key {part!r}{hint}")
        model = fields[part].annotation
    if isinstance(model, type) and issubclass(model, BaseModel):
        raise ConfigError(f"tune.space.{key} = {spec!r}: {key} is a section, not a value")
    if key.startswith("tune."):
        raise ConfigError(f"tune.space.{key} = {spec!r}: the search cannot tune its own settings")
