"""The model zoo: build a registered model (or a user's "pkg.module:factory") for a dataset's shape.

A user's factory loads only from a module the user trusts: trust_code("pkg.module") (see trust.py).

model = build_model("cnn", {"channels": [16, 32]}, spec)
"""

from behemoth.config import ModelConfig
from behemoth.models.common import count_parameters
from behemoth.models.entry import ModelEntry
from behemoth.models.registry import build_model, list_models, validate_model_options
from behemoth.models.trust import trust_code, trusted_modules

__all__ = [
    "ModelEntry",
    "build_model",
    "check_model_config",
    "count_parameters",
    "list_models",
    "trust_code",
    "trusted_modules",
    "validate_model_options",
]


def check_model_config(model: ModelConfig) -> None:
    """[model] against the chosen model's own options: a ConfigError naming model.<key>, before any work."""
    validate_model_options(model.name, model.options)
