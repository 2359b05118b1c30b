"""Run configuration: typed sections, TOML loading, dotted overrides.

A leaf of the package: pydantic and the standard library only (no torch, no stage), so every stage can
import it and `import behemoth.config` stays fast.
"""

from behemoth.config.compress import CompressConfig
from behemoth.config.data import AugmentConfig, DataConfig, SamplingConfig, ShardsConfig
from behemoth.config.explain import ExplainConfig
from behemoth.config.federate import FederateConfig
from behemoth.config.loader import apply_overrides, config_from_dict, dump_config, load_config
from behemoth.config.schema import ModelConfig, RunConfig
from behemoth.config.sizes import parse_size
from behemoth.config.train import CheckpointConfig, EarlyStopConfig, LoraConfig, TrainConfig
from behemoth.config.tune import TuneConfig

__all__ = [
    "AugmentConfig",
    "CheckpointConfig",
    "CompressConfig",
    "DataConfig",
    "EarlyStopConfig",
    "ExplainConfig",
    "FederateConfig",
    "LoraConfig",
    "ModelConfig",
    "RunConfig",
    "SamplingConfig",
    "ShardsConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "load_config",
    "parse_size",
]
