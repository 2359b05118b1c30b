"""The `behemoth` command line. Each command lives in a module of this package named `*_cmd` or
`*_cmds` and registers itself on `app` when imported; importing them all here keeps the list in one
place without every stage editing this file."""

import importlib
import pkgutil

from behemoth.cli.app import app, main

for _module in pkgutil.iter_modules(__path__):
    if _module.name.endswith(("_cmd", "_cmds")):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["app", "main"]
