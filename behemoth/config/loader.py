"""Load a run config: TOML file + dotted command-line overrides -> validated RunConfig.

Errors come out as one ConfigError line naming the dotted field path and the bad value.
"""

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from behemoth.config.schema import RunConfig
from behemoth.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `train.lr=0.05` into (["train", "lr"], 0.05); the value is read as a TOML literal."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. train.lr=0.05")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare words such as adam or runs/x are strings
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config dict with each dotted override set."""
    merged = json.loads(json.dumps(raw))  # deep copy of plain TOML data
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:-1])} is not a section")
            node = child
        node[path[-1]] = value
    return merged


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None


def format_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line per error is too much for a user: report the first, count the rest."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    value = first.get("input")
    shown = "" if first["type"] == "missing" else f" = {value!r}"
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    else:
        msg = first["msg"]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    prefix = f"{source}: " if source else ""
    return f"{prefix}{where}{shown}: {msg}{more}"


def config_from_dict(raw: dict[str, Any], source: str = "") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read `path` (or the defaults when None), apply overrides, validate."""
    raw = read_toml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source=str(path) if path else "")


def dump_config(cfg: RunConfig) -> str:
    """The fully resolved config as TOML text (written into every run directory)."""
    return to_toml(cfg.model_dump(mode="json", exclude_none=True))


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Minimal TOML writer for plain config data (tomllib reads only; no writer ships with Python)."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    header = [f"[{prefix}]"] if prefix else []
    out = "\n".join(header + scalars) + "\n"
    for key, value in data.items():
        if isinstance(value, dict):
            out += "\n" + to_toml(value, f"{prefix}.{key}" if prefix else key)
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
