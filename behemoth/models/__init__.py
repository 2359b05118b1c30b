"""The model zoo: build a registered model (or a user's "pkg.module:factory") for a dataset's shape.

model = build_model("cnn", {"channels": [16, 32]}, spec)
"""

from behemoth.config import ModelConfig
from behemoth.models.common import count_parameters
from behemoth.models.entry import ModelEntry
from behemoth.models.registry import build_model, list_models, validate_model_options

__all__ = [
    "ModelEntry",
    "build_model",
    "check_model_config",
    "count_parameters",
    "list_models",
    "validate_model_options",
]


def check_model_config(model: ModelConfig) -> None:
    """[model] against the chosen model's own options: a ConfigError naming model.<key>, before any work."""
    validate_model_options(model.name, model.options)
