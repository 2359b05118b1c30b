"""NumPy arrays: an .npz with x and y (optionally x_test, y_test, class_names), or a folder with x.npy
and y.npy.

x of shape (N, H, W) gains a channel, (N, C, H, W) stays, (N, F) is a table. Labels are whole numbers
in [0, K); K is len(class_names) when given, else the largest label + 1. 8-bit x is scaled by 1/255
like image files, so predict can feed raw pixels the same way.
"""

from pathlib import Path

import numpy as np

from behemoth.config import DataConfig
from behemoth.data.assemble import RawClassification, build_classification
from behemoth.data.bundle import DataBundle
from behemoth.data.checks import require_path, whole_labels
from behemoth.errors import DataError


def load_arrays(cfg: DataConfig) -> DataBundle:
    path = require_path(cfg.path, "arrays", "an .npz file (x, y) or a folder with x.npy and y.npy")
    arrays = read_npz(path) if path.is_file() else read_npy_folder(path)
    source = str(path)
    x, x_test = features(arrays["x"], f"{source} (x)"), None
    y, y_test = whole_labels(arrays["y"], f"{source} (y)"), None
    if len(y) == 0:
        raise DataError(f"{source}: x and y hold no samples")
    if len(x) != len(y):
        raise DataError(f"{source}: x has {len(x)} samples but y has {len(y)}")
    if "x_test" in arrays or "y_test" in arrays:
        if not ("x_test" in arrays and "y_test" in arrays):
            raise DataError(f"{source}: has only one of x_test and y_test; give both or neither")
        x_test = features(arrays["x_test"], f"{source} (x_test)")
        y_test = whole_labels(arrays["y_test"], f"{source} (y_test)")
        if len(x_test) != len(y_test) or x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{source}: x_test {x_test.shape} and y_test {y_test.shape} do not match x {x.shape}"
            )
    class_names = [str(c) for c in arrays["class_names"].tolist()] if "class_names" in arrays else None
    num_classes = (
        len(class_names) if class_names else int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    )
    raw = RawClassification(
        x,
        y,
        class_names or [str(i) for i in range(num_classes)],
        source,
        x_test,
        y_test,
        scale=255.0 if x.dtype == np.uint8 else 1.0,
    )
    return build_classification("arrays", raw, cfg)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: no array {key!r} (has: {', '.join(arrays) or 'nothing'})")
    return arrays


def read_npy_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key in ("x", "y", "x_test", "y_test", "class_names"):
        file = folder / f"{key}.npy"
        if not file.is_file():
            if key in ("x", "y"):
                raise DataError(f"{file} not found: a folder for dataset 'arrays' needs x.npy and y.npy")
            continue
        try:
            arrays[key] = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"cannot read {file}: {exc}") from None
    return arrays


def features(x: np.ndarray, source: str) -> np.ndarray:
    """x as (N, C, H, W) images or (N, F) table rows; numbers only."""
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise DataError(f"{source}: must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        return x[:, None]  # (N, 1, H, W)
    if x.ndim in (2, 4):
        return x
    raise DataError(f"{source}: shape {x.shape} is not (N, F), (N, H, W) or (N, C, H, W)")
