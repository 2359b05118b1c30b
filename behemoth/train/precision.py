"""Numeric precision of the train step: fp32, bf16 autocast (CPU and CUDA), fp16 autocast + GradScaler (CUDA)."""

import contextlib
from typing import ContextManager

import torch

from behemoth.errors import ConfigError


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        # fp16 matmuls run at ~2 GFLOP/s on CPU (no native kernels): refuse rather than crawl.
        raise ConfigError("train.precision = 'fp16': only on CUDA; use 'bf16' on CPU")


def autocast(precision: str, device: torch.device) -> ContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs loss scaling so small gradients do not flush to zero; bf16 has fp32's range and does not."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
