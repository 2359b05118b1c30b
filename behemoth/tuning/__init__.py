"""Choosing hyperparameters: the learning-rate range test and hyperparameter search (Optuna).

`lr_finder.find_lr` is a pure function over a model and data; `space` turns `[tune.space]` into
Optuna suggestions and config overrides; `study` runs, resumes and reports a study.
This package door imports only the config section: schema.py imports it, and config loading
must not pull in torch or optuna.
"""

from behemoth.config.tune import TuneConfig

__all__ = ["TuneConfig"]
