"""Explanations: Captum attribution methods behind one contract, with measured fidelity and pictures.

`attribute(explained(model, task, input_shape), inputs, target, method)` returns attributions of the
same shape as `inputs`; `fidelity` says how far to trust them; `run.explain_run` is the adapter the
CLI (`behemoth explain`) uses on a trained run.
"""

from behemoth.config.explain import METHODS, ExplainConfig
from behemoth.explanations.methods import Explained, attribute, default_baselines, explained

__all__ = ["METHODS", "ExplainConfig", "Explained", "attribute", "default_baselines", "explained"]
