"""`behemoth data preview`: a PNG grid of training samples as they are (top row) and as the configured
augmentation changes them (one row per draw), so a config can be checked by eye before training."""

import os
import tempfile
import textwrap
from pathlib import Path

import torch

from behemoth.config import RunConfig
from behemoth.config.data import AugmentConfig
from behemoth.data.augment.compose import Augment, channel_range
from behemoth.data.bundle import DataBundle
from behemoth.data.randomness import step_generator


def describe_ops(cfg: AugmentConfig) -> str:
    """'hflip p=0.5 · rotate p=0.8 degrees=[-15, 15] · ...' for the picture's title."""
    parts = []
    for name in cfg.active():
        op = getattr(cfg, name)
        extra = " ".join(
            f"{key}={[round(v, 3) for v in value] if isinstance(value, tuple) else value}"
            for key, value in op.model_dump(exclude_none=True).items()
            if key != "p"
        )
        parts.append(f"{name} p={op.p:g}" + (f" {extra}" if extra else ""))
    return " · ".join(parts)


def label_text(target: torch.Tensor, class_names: list[str]) -> str:
    """A hard label's class name; for a soft target (mixup/cutmix) the two largest shares."""
    if not target.is_floating_point():
        return class_names[int(target)] if class_names else str(int(target))
    shares, classes = target.topk(min(2, len(target)))
    name = lambda c: class_names[int(c)] if class_names else str(int(c))  # noqa: E731
    if shares[1] < 0.01:
        return name(classes[0])
    return f"{name(classes[0])} {shares[0]:.2f} + {name(classes[1])} {shares[1]:.2f}"


def augment_rounds(
    augment: Augment, x: torch.Tensor, y: torch.Tensor, rounds: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`rounds` independent augmentations of the same batch (each with the generator of a training step)."""
    return [augment(x, y, step_generator(seed, 0, step, 0, 0)) for step in range(rounds)]


def to_display(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in the data's units -> [0, 1] per channel (low: black, high: white), (B, H, W, C)."""
    span = (high - low).clamp_min(1e-8).view(1, -1, 1, 1)
    return ((x - low.view(1, -1, 1, 1)) / span).clamp(0, 1).permute(0, 2, 3, 1)


def preview_grid(
    x: torch.Tensor,
    y: torch.Tensor,
    rounds: list[tuple[torch.Tensor, torch.Tensor]],
    low: torch.Tensor,
    high: torch.Tensor,
    class_names: list[str],
    heading: str,
    path: Path,
) -> None:
    """Columns: samples; rows: the originals, then each augmentation round; every cell titled with its label.
    `low`, `high` (C,): each channel's value range, drawn black to white."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows, cols = 1 + len(rounds), len(x)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols + 0.9, 1.6 * rows + 0.9), squeeze=False)
    for row, (images, targets) in enumerate([(x, y)] + rounds):
        pictures = to_display(images.detach().float().cpu(), low, high)
        for col in range(cols):
            ax = axes[row, col]
            picture = pictures[col].numpy()
            ax.imshow(
                picture[..., 0] if picture.shape[-1] == 1 else picture,
                cmap="gray",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_title(label_text(targets[col].cpu(), class_names), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel("original" if row == 0 else f"augmented {row}", fontsize=8)
    fig.suptitle("\n".join(textwrap.fill(line, 110) for line in heading.split("\n")), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)  # readers never see half a picture
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_preview(
    cfg: RunConfig, data: DataBundle, path: Path, samples: int = 8, rounds: int = 3, seed: int = 0
) -> Path | None:
    """The grid for `cfg`'s training images: originals, plus `rounds` draws of data.augment when it has ops.
    None (nothing written) when the training inputs are not images."""
    from behemoth.data.augment.for_data import augment_for
    from behemoth.data.shards import StreamedSplit

    if isinstance(data.train, StreamedSplit):  # the first shard is enough to look at
        x_all, y_all = data.train.shards.to_tensors(*data.train.shards.read(0))
    else:
        x_all, y_all = data.train.x, data.train.y
    if x_all.ndim != 4 or not x_all.is_floating_point():
        return None
    picked = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))[:samples]
    x, y = x_all[picked], y_all[picked]
    augment = augment_for(cfg.data.augment, data)
    if augment is not None:
        low, high = augment.low, augment.high
        drawn = augment_rounds(augment, x, y, rounds, seed)
        heading = (
            f"{cfg.name}: {data.name} training samples (top row) and {rounds} draws of data.augment "
            f"(rows below)\n{describe_ops(cfg.data.augment)}"
        )
    else:
        low, high = channel_range(x_all)
        drawn = []
        heading = (
            f"{cfg.name}: {len(x)} {data.name} training samples as the model sees them (no data.augment)"
        )
    preview_grid(x, y, drawn, low, high, data.class_names, heading, path)
    return path
