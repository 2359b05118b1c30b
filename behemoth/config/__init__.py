"""Run configuration: typed sections, TOML loading, dotted overrides."""

from behemoth.config.loader import apply_overrides, config_from_dict, dump_config, load_config
from behemoth.config.schema import (
    CheckpointConfig,
    DataConfig,
    EarlyStopConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "EarlyStopConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
]
