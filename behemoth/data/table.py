"""A CSV or Parquet table: one label column (data.label_column), every other column a numeric feature.

Labels are the sorted unique values of the label column mapped to 0..K-1; class_names are their strings.
"""

from pathlib import Path

import numpy as np

from behemoth.config import DataConfig
from behemoth.data.assemble import RawClassification, build_classification
from behemoth.data.bundle import DataBundle
from behemoth.data.checks import require_path
from behemoth.errors import DataError

PARQUET = {".parquet", ".pq"}


def load_table(cfg: DataConfig) -> DataBundle:
    path = require_path(cfg.path, "table", "a CSV or Parquet file")
    if not cfg.label_column:
        raise DataError(f"data.label_column is not set: name the column of {path} that holds the labels")
    frame = read_frame(path)
    if cfg.label_column not in frame.columns:
        raise DataError(
            f"{path}: no column {cfg.label_column!r} (data.label_column); columns: "
            + ", ".join(map(str, frame.columns))
        )
    features = frame.drop(columns=[cfg.label_column])
    if features.shape[1] == 0:
        raise DataError(f"{path}: the only column is the label column {cfg.label_column!r}; no features")
    x = numeric_features(features, path)
    y, class_names = encode_labels(frame[cfg.label_column], path)
    meta = {"feature_names": [str(c) for c in features.columns], "label_column": cfg.label_column}
    raw = RawClassification(x, y, class_names, str(path), meta=meta)
    return build_classification("table", raw, cfg)


def read_frame(path: Path):
    import pandas as pd

    if path.is_dir():
        raise DataError(
            f"data.path = {str(path)!r} is a folder; dataset 'table' reads one CSV or Parquet file"
        )
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() in PARQUET else pd.read_csv(path)
    except (OSError, ValueError, ImportError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read table {path}: {reason}") from None
    if len(frame) == 0:
        raise DataError(f"{path}: the table has no rows")
    return frame


def numeric_features(features, path: Path) -> np.ndarray:
    """(N, F) float32; a non-numeric column or a missing value is a DataError naming the column."""
    import pandas as pd

    for column in features.columns:
        values = features[column]
        if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
            bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
            row = int(np.argmax(values.index == bad.index[0])) if len(bad) else 0
            raise DataError(
                f"{path}: feature column {column!r} is not numeric"
                f" (e.g. {values.iloc[row]!r} in row {row}); encode it as numbers or drop it"
            )
        missing = values.isna().to_numpy()
        if missing.any():
            raise DataError(
                f"{path}: feature column {column!r} has a missing value (row {int(np.argmax(missing))})"
            )
    x = features.to_numpy(dtype=np.float32)
    infinite = ~np.isfinite(x)
    if infinite.any():
        row, col = np.argwhere(infinite)[0]
        raise DataError(
            f"{path}: feature column {features.columns[col]!r} has an infinite or too large value (row {row})"
        )
    return x


def encode_labels(labels, path: Path) -> tuple[np.ndarray, list[str]]:
    """Sorted unique label values -> 0..K-1, vectorised (np.unique's inverse)."""
    missing = labels.isna().to_numpy()
    if missing.any():
        raise DataError(
            f"{path}: label column {labels.name!r} has a missing value (row {int(np.argmax(missing))})"
        )
    values = labels.to_numpy()
    try:
        unique, codes = np.unique(values, return_inverse=True)
    except TypeError:  # mixed types (e.g. numbers and strings) do not sort: compare them as strings
        unique, codes = np.unique(values.astype(str), return_inverse=True)
    if len(unique) < 2:
        raise DataError(
            f"{path}: label column {labels.name!r} has the single value {unique[0]!r};"
            " need at least 2 classes"
        )
    return codes.astype(np.int64).reshape(-1), [str(v) for v in unique]
