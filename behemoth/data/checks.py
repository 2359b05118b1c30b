"""Checks on what a loader read: each failure is one DataError line naming the file and the value."""

from pathlib import Path

import numpy as np

from behemoth.errors import DataError


def require_path(path: str | None, dataset: str, what: str) -> Path:
    """The existing file or folder named by data.path, or a DataError saying what to set."""
    if not path:
        raise DataError(f"data.path is not set: dataset {dataset!r} reads {what}")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DataError(f"data.path = {path!r}: no such file or folder (dataset {dataset!r} reads {what})")
    return resolved


def check_labels(y: np.ndarray, num_classes: int, source: str) -> None:
    """Labels are whole numbers in [0, num_classes)."""
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be one per sample (shape (N,)), got shape {y.shape}")
    if len(y) == 0:
        return
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{source}: label {y[i]} at index {i} is outside [0, {num_classes})"
            f" ({len(bad)} labels out of range)"
        )


def check_finite(x: np.ndarray, source: str) -> None:
    """No NaN or infinity among float features (integer pixels are finite by construction)."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    finite = np.isfinite(x)
    if not finite.all():
        i = int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
        raise DataError(f"{source}: sample {i} has a NaN or infinite value")


def check_count(actual: int, expected: int, what: str, source: str) -> None:
    if actual != expected:
        raise DataError(
            f"{source}: expected {expected} {what}, found {actual} (file truncated or not the original?)"
        )


def whole_labels(y: np.ndarray, source: str) -> np.ndarray:
    """Integer labels as int64; floats are accepted only when every value is a whole number."""
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64, copy=False)
    if np.issubdtype(y.dtype, np.floating):
        fractional = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(fractional):
            i = int(fractional[0])
            raise DataError(f"{source}: labels must be whole numbers; label {y[i]} at index {i} is not")
        return y.astype(np.int64)
    raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
