"""From `[tune.space]` to Optuna suggestions, and from sampled values to a validated run config.

A trial's config is the base config plus the sampled values as dotted overrides (`train.lr=0.01`),
put through the same `apply_overrides` + `config_from_dict` path as the command line, so a value
that the schema rejects fails exactly as it would there, naming the key.
"""

import json
from typing import Any

import optuna

from behemoth.config import RunConfig, apply_overrides, config_from_dict
from behemoth.errors import ConfigError
from behemoth.models import check_model_config

_SCALARS = (type(None), bool, int, float, str)


def categorical(choices: list[Any]) -> tuple[list[Any], bool]:
    """Optuna stores only scalar choices: lists (e.g. model.hidden = [[64], [128, 64]]) go as JSON text."""
    if all(isinstance(c, _SCALARS) for c in choices):
        return choices, False
    return [json.dumps(c) for c in choices], True


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one value per key; returns plain config values (JSON-encoded choices decoded)."""
    values: dict[str, Any] = {}
    for key, spec in space.items():
        kind, arg = next(iter(spec.items()))
        if kind == "choice":
            options, encoded = categorical(arg)
            value = trial.suggest_categorical(key, options)
            values[key] = json.loads(value) if encoded else value
        elif kind in ("int", "log_int"):
            values[key] = trial.suggest_int(key, arg[0], arg[1], log=kind == "log_int")
        else:
            values[key] = trial.suggest_float(key, float(arg[0]), float(arg[1]), log=kind == "log_uniform")
    return values


def decode_params(params: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A finished trial's stored params back to config values (the inverse of `categorical`)."""
    values = {}
    for key, value in params.items():
        choices = space.get(key, {}).get("choice")
        values[key] = json.loads(value) if choices is not None and categorical(choices)[1] else value
    return values


def as_overrides(values: dict[str, Any]) -> list[str]:
    """{"train.lr": 0.01} -> ["train.lr=0.01"]; JSON literals are valid TOML literals here."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def config_with(raw: dict[str, Any], values: dict[str, Any]) -> RunConfig:
    """The base config (raw TOML data) with `values` applied; a rejected value names its tune key."""
    try:
        cfg = config_from_dict(apply_overrides(raw, as_overrides(values)))
        check_model_config(cfg.model)  # a [model] option the chosen model lacks fails here, naming the key
        return cfg
    except ConfigError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise ConfigError(f"tune.space: sampled {shown}: {exc}") from None


def check_values(raw: dict[str, Any], space: dict[str, dict[str, Any]]) -> None:
    """Try every choice and both ends of every range, one key at a time, on the base config.

    Catches e.g. `data.batch_size = {choice = [0, 64]}` or a model option the chosen model lacks
    before any trial runs.
    """
    for key, spec in space.items():
        kind, arg = next(iter(spec.items()))
        for value in arg:
            try:
                check_model_config(config_from_dict(apply_overrides(raw, as_overrides({key: value}))).model)
            except ConfigError as exc:
                raise ConfigError(
                    f"tune.space.{key} = {spec!r}: value {value!r} is not valid: {exc}"
                ) from None
