"""The configured augmentation as one BatchTransform: draw every op's per-sample parameters from the step's
generator (on the CPU, so a run draws the same numbers on any device), then apply them batched.

Order (fixed): geometry (flips, rotation, scale, translation, shear: one warp), blur, brightness and
contrast, erasing, mixup, cutmix. A sample an op skips (its probability) is left exactly as it was.
"""

from dataclasses import dataclass, fields

import numpy as np
import torch

from behemoth.config.data import GEOMETRIC_OPS, AugmentConfig
from behemoth.data.augment.geometry import affine_matrices, warp
from behemoth.data.augment.mixing import cutmix, mixup, soft_targets
from behemoth.data.augment.photometric import (
    adjust_brightness_contrast,
    blur_kernel_size,
    box_mask,
    erase,
    gaussian_blur,
)
from behemoth.data.augment.workspace import Workspace, scratch
from behemoth.errors import ConfigError
from behemoth.spec import DataSpec


@dataclass
class AugmentParams:
    """One batch's random parameters, all on the CPU with leading dimension B (None: op not configured)."""

    warped: torch.Tensor | None = None  # (B,) bool: the sample goes through the warp
    theta: torch.Tensor | None = None  # (B, 2, 3)
    blurred: torch.Tensor | None = None  # (B,) bool
    sigma: torch.Tensor | None = None  # (B,)
    delta: torch.Tensor | None = None  # (B,) brightness shift, fraction of the range (0: unchanged)
    factor: torch.Tensor | None = None  # (B,) contrast factor (1: unchanged)
    erase_box: torch.Tensor | None = None  # (B, 4) top, left, height, width (height 0: not erased)
    noise: torch.Tensor | None = None  # (B, C, H, W) erase value "random"
    mix_partner: torch.Tensor | None = None  # (B,) index of the sample to mix with
    mix_lam: torch.Tensor | None = None  # (B,) own share (1: unmixed)
    cut_partner: torch.Tensor | None = None
    cut_box: torch.Tensor | None = None  # (B, 4)

    def select(self, rows: torch.Tensor) -> "AugmentParams":
        """The parameters of some samples only (partners are batch positions: not selectable)."""
        if self.mix_partner is not None or self.cut_partner is not None:
            raise ValueError("mixup/cutmix parameters pair samples within the batch: select the whole batch")
        return AugmentParams(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                for f in fields(self)
            }
        )


def channel_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) of images (N, C, H, W): the 'black' fill and the clamp of
    brightness/contrast."""
    return x.amin((0, 2, 3)), x.amax((0, 2, 3))


class Augment:
    """A BatchTransform: `augment(x, y, generator) -> (x, y)` with per-sample random parameters.

    low, high (C,) are each channel's value range in the data's units (see channel_range); num_classes
    is needed for mixup/cutmix, whose targets come back as soft (B, K) float rows.
    """

    def __init__(
        self, cfg: AugmentConfig, low: torch.Tensor, high: torch.Tensor, num_classes: int | None = None
    ):
        self.cfg, self.num_classes = cfg, num_classes
        self.low, self.high = low.float().cpu(), high.float().cpu()
        self.geometric = any(getattr(cfg, name) is not None for name in GEOMETRIC_OPS)
        self.mixing = cfg.mixup is not None or cfg.cutmix is not None
        if self.mixing and not num_classes:
            raise ConfigError("data.augment.mixup/cutmix: needs the number of classes")
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.workspace = Workspace()  # reused intermediates (see workspace.py): per thread

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(x, y, self.draw(len(x), tuple(x.shape[1:]), generator))

    # --- parameters -----------------------------------------------------------------------------------

    def draw(self, batch: int, sample_shape: tuple[int, ...], generator: torch.Generator) -> AugmentParams:
        """Every configured op's parameters for `batch` samples, drawn in a fixed order.

        One seed is taken from `generator` (so the draws are a pure function of the step's seed); NumPy
        then draws everything (~10x less overhead per small array than torch, and it has Beta).
        """
        cfg = self.cfg
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        height, width = sample_shape[-2:] if len(sample_shape) == 3 else (1, 1)
        gate = lambda op: rng.random(batch) < op.p  # noqa: E731
        uniform = lambda bounds, *shape: rng.uniform(bounds[0], bounds[1], (batch, *shape))  # noqa: E731
        tensor = torch.from_numpy
        p = AugmentParams()
        if self.geometric:
            warped = np.zeros(batch, dtype=bool)
            flip, angle = np.ones((batch, 2)), np.zeros(batch)
            scale, translate, shear = np.ones(batch), np.zeros((batch, 2)), np.zeros((batch, 2))
            for axis, op in enumerate((cfg.hflip, cfg.vflip)):
                if op is not None:
                    on = gate(op)
                    flip[on, axis] = -1.0
                    warped |= on
            if cfg.rotate is not None:
                on = gate(cfg.rotate)
                angle = np.where(on, uniform(cfg.rotate.degrees), 0.0)
                warped |= on
            if cfg.scale is not None:
                on = gate(cfg.scale)
                scale = np.where(on, uniform(cfg.scale.range), 1.0)
                warped |= on
            if cfg.translate is not None:
                on = gate(cfg.translate)
                translate = np.where(on[:, None], uniform(cfg.translate.fraction, 2), 0.0)
                warped |= on
            if cfg.shear is not None:
                on = gate(cfg.shear)
                shear = np.where(on[:, None], uniform(cfg.shear.degrees, 2), 0.0)
                warped |= on
            p.warped = tensor(warped)
            p.theta = affine_matrices(flip, angle, scale, translate, shear, height, width)
        if cfg.blur is not None:
            p.blurred, p.sigma = tensor(gate(cfg.blur)), tensor(uniform(cfg.blur.sigma)).float()
        if cfg.brightness is not None:
            p.delta = tensor(np.where(gate(cfg.brightness), uniform(cfg.brightness.range), 0.0)).float()
        if cfg.contrast is not None:
            p.factor = tensor(np.where(gate(cfg.contrast), uniform(cfg.contrast.range), 1.0)).float()
        if cfg.erase is not None:
            on = gate(cfg.erase)
            area = uniform(cfg.erase.area) * height * width
            ratio = np.exp(uniform(np.log(cfg.erase.ratio)))  # log-uniform height / width
            box_h = np.clip(np.round(np.sqrt(area * ratio)), 1, height)
            box_w = np.clip(np.round(np.sqrt(area / ratio)), 1, width)
            top = np.floor(rng.random(batch) * (height - box_h + 1))
            left = np.floor(rng.random(batch) * (width - box_w + 1))
            p.erase_box = tensor(np.stack([top, left, box_h * on, box_w * on], 1).astype(np.int64))
            if cfg.erase.value == "random":
                p.noise = tensor(rng.standard_normal((batch, *sample_shape), dtype=np.float32))
        if cfg.mixup is not None:
            on = gate(cfg.mixup)
            p.mix_partner = tensor(rng.permutation(batch))
            p.mix_lam = tensor(np.where(on, rng.beta(cfg.mixup.alpha, cfg.mixup.alpha, batch), 1.0)).float()
        if cfg.cutmix is not None:
            on = gate(cfg.cutmix)
            p.cut_partner = tensor(rng.permutation(batch))
            cut = np.sqrt(1.0 - rng.beta(cfg.cutmix.alpha, cfg.cutmix.alpha, batch))  # side ratio of the box
            centre_y, centre_x = uniform((0, height)), uniform((0, width))
            top = np.clip(np.round(centre_y - cut * height / 2), 0, height)
            bottom = np.clip(np.round(centre_y + cut * height / 2), 0, height)
            left = np.clip(np.round(centre_x - cut * width / 2), 0, width)
            right = np.clip(np.round(centre_x + cut * width / 2), 0, width)
            p.cut_box = tensor(
                np.stack([top, left, (bottom - top) * on, (right - left) * on], 1).astype(np.int64)
            )
        return p

    # --- application ----------------------------------------------------------------------------------

    def apply(self, x: torch.Tensor, y: torch.Tensor, p: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) (or (B, F) for mixup alone), y (B,) or (B, K); returns new tensors (x is not
        modified)."""
        cfg, device, ws = self.cfg, x.device, self.workspace
        low, high = self._range(device)
        to = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        owned = False  # True once x is a tensor made here, which later ops may overwrite
        if p.theta is not None:
            # black: each channel's lowest value; when that (or the mean) is 0, plain zero padding is the fill
            fill_value = low if cfg.fill == "black" and bool(self.low.any()) else None
            x, owned = on_rows(
                x,
                p.warped,
                owned,
                lambda part, rows: warp(part, to(p.theta[rows]), cfg.fill, fill_value, ws),
                ws,
            )
        if p.sigma is not None:
            size = blur_kernel_size(cfg.blur.sigma[1], x.shape[-2], x.shape[-1], cfg.blur.kernel)
            x, owned = on_rows(
                x, p.blurred, owned, lambda part, rows: gaussian_blur(part, to(p.sigma[rows]), size, ws), ws
            )
        if p.delta is not None or p.factor is not None:
            delta = to(p.delta) if p.delta is not None else None
            factor = to(p.factor) if p.factor is not None else None
            x = adjust_brightness_contrast(x, delta, factor, low, high)
        if p.erase_box is not None:
            top, left, box_h, box_w = to(p.erase_box).unbind(1)
            mask = box_mask(top, left, box_h, box_w, x.shape[-2], x.shape[-1], x.dtype)
            value = (
                to(p.noise)
                if p.noise is not None
                else low
                if cfg.erase.value == "black"
                else torch.zeros_like(low)
            )
            x = erase(x, mask, value)
        if self.mixing:
            y = soft_targets(y, self.num_classes)
        if p.mix_partner is not None:
            x, y = mixup(x, y, to(p.mix_partner), to(p.mix_lam), ws)
        if p.cut_partner is not None:
            x, y = cutmix(x, y, to(p.cut_partner), *to(p.cut_box).unbind(1), workspace=ws)
        return x, y

    def _range(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.low.to(device), self.high.to(device))
        return self._on_device[device]


def on_rows(
    x: torch.Tensor, chosen: torch.Tensor, owned: bool, op, workspace: Workspace | None = None
) -> tuple[torch.Tensor, bool]:
    """(x with op(x[rows], rows) written into the rows chosen (B,) bool, whether the result is a new tensor).

    x itself comes back when no row is chosen; it is written in place only when `owned` (made by an
    earlier op).
    """
    rows = chosen.nonzero().squeeze(1)  # CPU: no device sync
    if len(rows) == 0:
        return x, owned
    if len(rows) == len(x):
        return op(x, rows), True
    on_device = rows.to(x.device)
    part = torch.index_select(x, 0, on_device, out=scratch(workspace, "rows", (len(rows), *x.shape[1:]), x))
    result = op(part, rows)
    return (x.index_copy_(0, on_device, result) if owned else x.index_copy(0, on_device, result)), True


IMAGE_OPS = GEOMETRIC_OPS + ("blur", "brightness", "contrast", "erase", "cutmix")


def build_augment(
    cfg: AugmentConfig, spec: DataSpec, low: torch.Tensor | None, high: torch.Tensor | None
) -> Augment | None:
    """The Augment data.augment asks for on data of this spec (None: no op configured); a ConfigError names
    the first op the data cannot take."""
    ops = cfg.active()
    if not ops:
        return None
    if spec.task != "classification":
        raise ConfigError(
            f"data.augment.{ops[0]}: augmentation needs a classification dataset (this one is {spec.task})"
        )
    image_ops = [name for name in ops if name in IMAGE_OPS]
    if image_ops and len(spec.input_shape) != 3:
        raise ConfigError(
            f"data.augment.{image_ops[0]}: needs images (C, H, W); this dataset's samples have "
            f"shape {spec.input_shape}"
        )
    if low is None or high is None:
        channels = spec.input_shape[0] if len(spec.input_shape) == 3 else 1
        low, high = torch.full((channels,), -1.0), torch.ones(channels)
    return Augment(cfg, low, high, spec.num_classes)
