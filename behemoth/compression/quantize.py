"""Affine int8 quantization: the math as plain functions, and real int8 models from torch.ao.

The math: q = clamp(round(w / S) + Z, qmin, qmax), w ~ S (q - Z), per tensor or per output channel.

The models run on torch.ao's quantized kernels (`torch.ao.nn.quantized.Linear` / `Conv2d` and their fused
ReLU forms, which call `quantized::linear` / `quantized::conv2d` of the "x86" engine: fbgemm's and oneDNN's
int8 GEMMs, VNNI on CPUs that have it), never fake-quant at inference:
- `quantize_static`: weights and activations int8; activation ranges from calibration batches
  (post-training static quantization). For chain models (mlp, lenet5, lenet_caffe, cnn): the input is
  quantized once, every layer reads and writes int8, the output is dequantized.
- `quantize_dynamic`: int8 weights; each Linear quantizes its input per batch at run time (any model).
- `prepare_qat` / `convert_qat`: fake-quant modules (straight-through gradients) trained through the engine,
  then converted to the same int8 model as `quantize_static`.
"""

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
import torch.ao.quantization as tq
from torch import nn

from behemoth.errors import BehemothError

QUANT_LAYER_TYPES = (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d)  # fused ReLU forms are subclasses
FUSABLE = [
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv2d, nn.ReLU),
    (nn.Conv1d, nn.BatchNorm1d, nn.ReLU),
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv1d, nn.ReLU),
    (nn.Linear, nn.BatchNorm1d),
    (nn.Linear, nn.ReLU),
]


# ----- the math (pure functions on tensors) -----


@dataclass
class QParams:
    scale: torch.Tensor  # () per tensor, (C,) per channel
    zero_point: torch.Tensor  # same shape as scale, int64
    qmin: int = -128
    qmax: int = 127
    axis: int | None = None  # the channel axis when per channel

    def shaped(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """scale and zero point broadcastable against x."""
        if self.axis is None:
            return self.scale, self.zero_point
        view = [1] * x.ndim
        view[self.axis] = -1
        return self.scale.view(view), self.zero_point.view(view)


def choose_qparams(
    x: torch.Tensor, bits: int = 8, symmetric: bool = True, axis: int | None = None, signed: bool = True
) -> QParams:
    """Scale and zero point that map [min(x), max(x)] (always including 0) onto the integer range.

    Symmetric: Z = 0 and S = max|x| / qmax (zero exactly representable; what int8 weights use).
    Affine: S = (max - min) / (qmax - qmin), Z = qmin - round(min / S) (activations after ReLU use all
    levels).
    """
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if axis is None:
        low, high = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
    else:
        dims = [d for d in range(x.ndim) if d != axis % x.ndim]
        low, high = x.amin(dim=dims).clamp(max=0.0), x.amax(dim=dims).clamp(min=0.0)
    tiny = torch.finfo(torch.float32).eps
    if symmetric:
        scale = (torch.maximum(-low, high) / ((qmax - qmin) / 2)).clamp(min=tiny)
        zero_point = torch.zeros_like(scale, dtype=torch.int64) + (0 if signed else (qmax + qmin + 1) // 2)
    else:
        scale = ((high - low) / (qmax - qmin)).clamp(min=tiny)
        zero_point = (qmin - torch.round(low / scale)).clamp(qmin, qmax).to(torch.int64)
    return QParams(scale.float(), zero_point, qmin, qmax, None if axis is None else axis % x.ndim)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """q = clamp(round(x / S) + Z, qmin, qmax), as int32 (round half to even, as torch's kernels do)."""
    scale, zero_point = qp.shaped(x)
    inverse = 1.0 / scale.float()  # multiply by the float32 inverse, as torch's kernels do (same ties)
    return torch.clamp(torch.round(x * inverse) + zero_point, qp.qmin, qp.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    scale, zero_point = qp.shaped(q)
    return (q.to(torch.float32) - zero_point) * scale


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """dequantize(quantize(x)) in the forward; straight-through in the backward: gradient 1 where x is
    inside the representable range, 0 where it was clipped (Bengio et al. 2013; Jacob et al. 2018)."""
    scale, zero_point = qp.shaped(x)
    low, high = (qp.qmin - zero_point) * scale, (qp.qmax - zero_point) * scale
    inside = ((x >= low) & (x <= high)).to(x.dtype)
    rounded = dequantize(quantize(x, qp), qp)
    # forward: rounded; backward: d/dx of x * inside = inside
    return x * inside + (rounded - x * inside).detach()


# ----- int8 models on torch.ao's quantized kernels -----


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.ao's eager API warns that it is deprecated in favour of torchao's pt2e flow on every call;
    that flow is slower here (see ENVIRONMENT.md), so we stay on the eager modules and silence the notice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


@contextlib.contextmanager
def engine(name: str) -> Iterator[None]:
    """Select torch's quantized engine (x86 = fbgemm + oneDNN) for the duration."""
    if name not in torch.backends.quantized.supported_engines:
        raise BehemothError(
            f"compress.engine = {name!r}: not available in this torch build "
            f"(available: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def fusion_groups(model: nn.Module) -> list[list[str]]:
    """Adjacent (conv, bn, relu) / (conv, relu) / (linear, relu) children of every Sequential, by name."""
    groups = []
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        names = list(container._modules)
        i = 0
        while i < len(names):
            for pattern in FUSABLE:
                window = names[i : i + len(pattern)]
                if len(window) == len(pattern) and all(
                    type(container._modules[n]) is t for n, t in zip(window, pattern)
                ):
                    groups.append([f"{prefix}.{n}" if prefix else n for n in window])
                    i += len(pattern) - 1
                    break
            i += 1
    return groups


def qconfig_for(engine_name: str, per_channel: bool, qat: bool = False) -> tq.QConfig:
    base = tq.get_default_qat_qconfig(engine_name) if qat else tq.get_default_qconfig(engine_name)
    if per_channel:
        return base
    weight = tq.default_weight_fake_quant if qat else tq.default_weight_observer
    return tq.QConfig(activation=base.activation, weight=weight)


def prepared_static(model: nn.Module, engine_name: str = "x86", per_channel: bool = True) -> nn.Module:
    """A copy of `model`, fused and wrapped (quant -> model -> dequant), with observers attached."""
    return _prepared(model, engine_name, per_channel, qat=False)


def _prepared(model: nn.Module, engine_name: str, per_channel: bool, qat: bool) -> nn.Module:
    """Fuse, wrap and attach observers (static) or fake-quant modules (QAT) to a copy of `model`."""
    wrapped = tq.QuantWrapper(copy.deepcopy(model).train(qat))
    with quiet():
        groups = fusion_groups(wrapped.module)
        if groups:
            (tq.fuse_modules_qat if qat else tq.fuse_modules)(wrapped.module, groups, inplace=True)
        wrapped.qconfig = qconfig_for(engine_name, per_channel, qat=qat)
        (tq.prepare_qat if qat else tq.prepare)(wrapped, inplace=True)
    return wrapped


def convert(prepared: nn.Module, engine_name: str, example: torch.Tensor) -> nn.Module:
    """Swap observed modules for int8 ones and check the result runs on quantized tensors end to end."""
    with quiet(), engine(engine_name):
        quantized = tq.convert(prepared.eval(), inplace=False)
        try:
            with torch.inference_mode():
                quantized(example[:2])
        except (RuntimeError, NotImplementedError) as exc:
            first = str(exc).strip().splitlines()[0][:160]
            raise BehemothError(
                f"static int8 needs a model whose layers all accept int8 tensors (mlp, lenet5, "
                f"lenet_caffe, cnn): {first}; use compress.quant = 'dynamic'"
            ) from None
    return quantized


def quantize_static(
    model: nn.Module, calibration: Iterable[torch.Tensor], engine_name: str = "x86", per_channel: bool = True
) -> nn.Module:
    """Post-training static int8: observe activation ranges on `calibration` batches, then convert."""
    prepared = prepared_static(model, engine_name, per_channel)
    example = None
    with torch.inference_mode(), engine(engine_name):
        for batch in calibration:
            prepared(batch)
            example = batch if example is None else example
    if example is None:
        raise ValueError("quantize_static needs at least one calibration batch")
    return convert(prepared, engine_name, example)


def quantize_dynamic(model: nn.Module, engine_name: str = "x86") -> nn.Module:
    """int8 weights for every nn.Linear; activations are quantized per batch at run time."""
    with quiet(), engine(engine_name):
        return tq.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def prepare_qat(model: nn.Module, engine_name: str = "x86", per_channel: bool = True) -> nn.Module:
    """A fused copy with fake-quant on weights and activations, ready to train (straight-through grads)."""
    return _prepared(model, engine_name, per_channel, qat=True)


def convert_qat(trained: nn.Module, engine_name: str, example: torch.Tensor) -> nn.Module:
    return convert(trained.eval(), engine_name, example)


def int8_layers(model: nn.Module) -> dict[str, str]:
    """Layers that run on int8 kernels: {name: module type} (static and dynamic)."""
    kinds = QUANT_LAYER_TYPES + (nnqd.Linear,)
    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds)}


def float_compute_layers(model: nn.Module) -> list[str]:
    """Float Linear/Conv layers left in a model (none in a fully static-quantized chain)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [name for name, m in model.named_modules() if type(m) in kinds]


def is_int8(model: nn.Module) -> bool:
    return bool(int8_layers(model))
