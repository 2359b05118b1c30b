"""Batched data augmentation with per-sample random parameters (no per-sample Python loop).

Pure functions on tensors (`affine_matrices` + `warp`, `gaussian_blur`, `adjust_brightness_contrast`,
`erase`, `mixup`, `cutmix`) and `Augment`, the configured chain as a BatchTransform for the training feed.
Works on CPU and CUDA tensors; parameters are drawn on the CPU from the step's generator.
"""

from behemoth.data.augment.compose import Augment, AugmentParams, build_augment, channel_range
from behemoth.data.augment.geometry import affine_matrices, warp
from behemoth.data.augment.mixing import cutmix, mixup, soft_targets
from behemoth.data.augment.photometric import adjust_brightness_contrast, erase, gaussian_blur

__all__ = [
    "Augment",
    "AugmentParams",
    "adjust_brightness_contrast",
    "affine_matrices",
    "build_augment",
    "channel_range",
    "cutmix",
    "erase",
    "gaussian_blur",
    "mixup",
    "soft_targets",
    "warp",
]
