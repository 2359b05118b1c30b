"""Numeric precision of the train step.

Two separate switches:
- train.precision, the *compute* dtype: fp32, bf16 autocast (CPU and CUDA), fp16 autocast + GradScaler (CUDA;
  its state goes into checkpoints, see scaler_state);
- train.param_dtype, the *storage* dtype of parameters (and so of their gradients and torch.optim states):
  bf16 halves them. Autocast alone keeps fp32 parameters and saves only activation memory.
"""

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from behemoth.cpu import lacks_native_bf16
from behemoth.errors import ConfigError

log = logging.getLogger(__name__)

PARAM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        # fp16 matmuls run at ~2 GFLOP/s on CPU (no native kernels): refuse rather than crawl.
        raise ConfigError("train.precision = 'fp16': only on CUDA; use 'bf16' on CPU")
    if precision == "bf16" and device.type == "cpu" and lacks_native_bf16():
        # measured on a 2-core AMD EPYC (AVX2): a 1024 x 1024 F.linear at 17 GFLOP/s in bf16, ~75 in fp32
        log.warning(
            "train.precision = 'bf16': this CPU has no bf16 instructions (avx512_bf16 / amx_bf16), so bf16 "
            "matmuls run several times slower than fp32 here; use 'fp32'"
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs loss scaling so small gradients do not flush to zero; bf16 has fp32's range and does not."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def scaler_state(scaler: torch.amp.GradScaler) -> dict[str, float | int]:
    """The scaler's state as plain numbers (empty when it is disabled), fit for a weights_only checkpoint.

    A resumed fp16 run needs it: a fresh scaler starts again from the initial scale, so its first steps
    would be skipped or scaled differently from the uninterrupted run's.
    """
    return {
        key: value.item() if isinstance(value, torch.Tensor) else value
        for key, value in scaler.state_dict().items()
    }


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, float | int] | None) -> None:
    """Restore `scaler_state`'s numbers; nothing to do for a disabled scaler or a checkpoint without any
    (written by a run without loss scaling, or before scaler states were saved)."""
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _cast_float_inputs(dtype: torch.dtype) -> Callable:
    def hook(module: nn.Module, args: tuple) -> tuple:
        return tuple(
            a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        )

    return hook


def cast_parameters(model: nn.Module, param_dtype: str) -> nn.Module:
    """Store `model`'s floating-point parameters and buffers in `param_dtype` ("fp32" leaves it alone).

    Float inputs (images, features) are cast to match on the way in, so a bf16 model takes the same
    fp32 batches as before; token ids pass through untouched.
    """
    dtype = PARAM_DTYPES[param_dtype]
    if dtype is torch.float32:
        return model
    model.to(dtype)
    model.register_forward_pre_hook(_cast_float_inputs(dtype))
    return model


def build_with_param_dtype(build: Callable[[], nn.Module], param_dtype: str) -> nn.Module:
    """Build a model directly in its storage dtype: a bf16 model never holds an fp32 copy, so its peak
    memory while being built is 2 bytes per parameter rather than 4 + 2."""
    with default_dtype(PARAM_DTYPES[param_dtype]):
        model = build()
    return cast_parameters(model, param_dtype)


def check_param_dtype(model: nn.Module, param_dtype: str) -> None:
    """Fail early when train.param_dtype and the model's parameters disagree (build_with_param_dtype
    fixes it)."""
    if param_dtype == "fp32":
        return  # the default: a model kept in another dtype on purpose (e.g. by a compression stage) is fine
    want = PARAM_DTYPES[param_dtype]
    found = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if found and found != {want}:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in found))
        raise ConfigError(
            f"train.param_dtype = {param_dtype!r}: the model's parameters are {names}; build it with "
            "behemoth.training.precision.build_with_param_dtype (the CLI does)"
        )
