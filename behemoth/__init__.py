"""behemoth: make big neural models practical on limited resources.

The stage functions (`behemoth.train`, `evaluate`, `compress`, `explain`, `federate`, `tune`, `report`, ...)
are loaded on first use, so `import behemoth` stays light (no torch until one is called).
`behemoth.trust_code("pkg.module")` lets model names import your own code (see behemoth.models.trust).
"""

__version__ = "0.1.0"

_API = (
    "compress",
    "demo",
    "demo_lm",
    "distill",
    "evaluate",
    "explain",
    "export",
    "federate",
    "generate",
    "generate_stream",
    "load_config",
    "lr_find",
    "plan",
    "predict",
    "report",
    "train",
    "trust_code",
    "tune",
)
_LAZY = {name: "behemoth.pipeline" for name in _API} | {"load_packed": "behemoth.compression.pack"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'behemoth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
