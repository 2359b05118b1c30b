"""Images in a folder with one subfolder per class (class names = sorted subfolder names), read with Pillow.

Grayscale images stay one channel; if any image has colour, all become RGB. Without data.image_size
every image must have the same size; with it, each is resized to (H, W).
"""

from pathlib import Path

import numpy as np

from behemoth.config import DataConfig
from behemoth.data.assemble import RawClassification, build_classification
from behemoth.data.bundle import DataBundle
from behemoth.data.checks import require_path
from behemoth.errors import DataError

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def load_folder(cfg: DataConfig) -> DataBundle:
    from PIL import Image

    root = require_path(cfg.path, "folder", "a folder with one subfolder of images per class")
    if not root.is_dir():
        raise DataError(
            f"data.path = {cfg.path!r} is a file; dataset 'folder' needs a folder"
            " with one subfolder of images per class"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class subfolders (expected {root}/<class name>/<image files>)")
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        if not found:
            raise DataError(f"{class_dir}: class folder holds no image files")
        files += found
        labels += [label] * len(found)

    modes, sizes = read_headers(files)
    mode = "L" if all(m in GRAY_MODES for m in modes) else "RGB"
    height, width = cfg.image_size or common_size(files, sizes)
    x = read_pixels(files, mode, (height, width))
    raw = RawClassification(
        x,
        np.array(labels, dtype=np.int64),
        [p.name for p in class_dirs],
        str(root),
        scale=255.0,
        meta={"image_mode": mode, "files": len(files)},
    )
    return build_classification("folder", raw, cfg)


def read_headers(files: list[Path]) -> tuple[list[str], list[tuple[int, int]]]:
    """Mode and (height, width) of every image, from its header alone (no decoding yet)."""
    from PIL import Image

    modes, sizes = [], []
    for path in files:
        try:
            with Image.open(path) as image:
                modes.append(image.mode)
                sizes.append((image.height, image.width))
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
    return modes, sizes


def common_size(files: list[Path], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The one size all images share, or a DataError naming two that differ."""
    for path, size in zip(files, sizes):
        if size != sizes[0]:
            raise DataError(
                f"images differ in size: {files[0]} is {sizes[0][1]}x{sizes[0][0]},"
                f" {path} is {size[1]}x{size[0]} (width x height); set data.image_size = [H, W] to resize"
            )
    return sizes[0]


def read_pixels(files: list[Path], mode: str, size: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) uint8, decoded one file at a time into a preallocated array."""
    from PIL import Image

    height, width = size
    channels = 1 if mode == "L" else 3
    out = np.empty((len(files), height, width, channels), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                image = image.convert(mode)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                out[i] = np.asarray(image).reshape(height, width, channels)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
    return out.transpose(0, 3, 1, 2)  # (N, C, H, W) view; the split copies it contiguous
