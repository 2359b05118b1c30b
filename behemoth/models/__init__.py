"""The model zoo: build a registered model (or a user's "pkg.module:factory") for a dataset's shape.

    model = build_model("cnn", {"channels": [16, 32]}, spec)
"""

from behemoth.models.common import count_parameters
from behemoth.models.registry import ModelEntry, build_model, list_models, validate_model_options

__all__ = ["ModelEntry", "build_model", "count_parameters", "list_models", "validate_model_options"]
