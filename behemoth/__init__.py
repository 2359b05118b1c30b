"""behemoth: make big neural models practical on limited resources."""

__version__ = "0.1.0"

_LAZY = {"load_packed": "behemoth.compression.pack"}  # name -> module; imported on first use (torch stays unloaded)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'behemoth' has no attribute {name!r}")
