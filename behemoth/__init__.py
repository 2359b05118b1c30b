"""behemoth: make big neural models practical on limited resources."""

__version__ = "0.1.0"
