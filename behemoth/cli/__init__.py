"""The `behemoth` command line. Each command lives in its own module and registers on `app`."""

from behemoth.cli import catalog_cmds, demo_cmd, eval_cmds, explain_cmd, train_cmd, tune_cmds  # noqa: F401  (register commands)
from behemoth.cli.app import app, main

__all__ = ["app", "main"]
