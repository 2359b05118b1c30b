"""`behemoth data preview`: a PNG grid of training samples as they are (top row) and as the configured
augmentation changes them (one row per draw), so a config can be checked by eye before training."""

import os
import tempfile
import textwrap
from pathlib import Path

import torch

from behemoth.data.augment.compose import Augment
from behemoth.data.pipeline_config import AugmentConfig
from behemoth.train.feed import step_generator


def describe_ops(cfg: AugmentConfig) -> str:
    """'hflip p=0.5 · rotate p=0.8 degrees=[-15, 15] · ...' for the picture's title."""
    parts = []
    for name in cfg.active():
        op = getattr(cfg, name)
        extra = " ".join(f"{key}={[round(v, 3) for v in value] if isinstance(value, tuple) else value}"
                         for key, value in op.model_dump(exclude_none=True).items() if key != "p")
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


def augment_rounds(augment: Augment, x: torch.Tensor, y: torch.Tensor, rounds: int, seed: int
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`rounds` independent augmentations of the same batch (each with the generator of a training step)."""
    return [augment(x, y, step_generator(seed, 0, step, 0, 0)) for step in range(rounds)]


def to_display(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in the data's units -> [0, 1] per channel (low: black, high: white), (B, H, W, C)."""
    span = (high - low).clamp_min(1e-8).view(1, -1, 1, 1)
    return ((x - low.view(1, -1, 1, 1)) / span).clamp(0, 1).permute(0, 2, 3, 1)


def preview_grid(
    x: torch.Tensor, y: torch.Tensor, rounds: list[tuple[torch.Tensor, torch.Tensor]], augment: Augment,
    class_names: list[str], heading: str, path: Path,
) -> None:
    """Columns: samples; rows: the originals, then each augmentation round; every cell titled with its label."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    rows, cols = 1 + len(rounds), len(x)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols + 0.9, 1.6 * rows + 0.9), squeeze=False)
    for row, (images, targets) in enumerate([(x, y)] + rounds):
        pictures = to_display(images.detach().float().cpu(), augment.low, augment.high)
        for col in range(cols):
            ax = axes[row, col]
            picture = pictures[col].numpy()
            ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
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
