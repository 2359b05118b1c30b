"""Weight-only int8 and int4 quantization of a language model's Linear layers, run on torch's own CPU kernels.

Decoding a token reads every weight once, so it is bound by weight bytes, not FLOPs: int8 reads a quarter of
fp32's bytes, int4 an eighth. Activations stay in bf16 (no calibration needed, unlike quantize.py's static
int8). The kernels are aten ops (torchao's int4 configs need a package this machine lacks, and its int8 ones
were not faster here; see ENVIRONMENT.md):
- int8, symmetric, one scale per output channel: w ~ q * scale, q in [-127, 127];
  `_weight_int8pack_mm(x_bf16 (M, K), q (N, K) int8, scales (N,) bf16)`.
- int4, asymmetric, one (scale, zero) per group of `group` inputs of an output channel: w ~ (q - 8) * scale
  + zero with q in [0, 15] (tinygemm's convention: the zero is a float offset, not an integer point);
  `_weight_int4pack_mm_for_cpu(x_bf16, packed, group, scales_and_zeros (K / group, N, 2) bf16)`, where
  `packed = _convert_weight_to_int4pack_for_cpu(q (N, K) int32, 1)` (an interleaved layout of its own).

The replacement modules compute in bf16 and return the input's dtype, so a GPT keeps running (KV cache
included) with its Linears swapped.
"""

import copy

import torch
from torch import nn

from behemoth.compression import int4_kernel, int8_kernel
from behemoth.errors import BehemothError

GROUP_SIZES = (32, 64, 128)
BITS = (8, 4)


class WeightOnlyError(BehemothError):
    """A layer or setting weight-only quantization cannot take (group size, layer shape)."""


def bf16_at_least(x: torch.Tensor) -> torch.Tensor:
    """Positive float32 values rounded up to bfloat16 (a bf16 is a float32's top 16 bits): a scale rounded
    down would push the largest weights past the last code, where they clip."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0xFFFF) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)


def _matmul_input(x: torch.Tensor, in_features: int) -> torch.Tensor:
    return x.reshape(-1, in_features).to(torch.bfloat16)  # (M, K): the kernels take 2-D bf16


def _matmul_output(y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The kernel's (M, N) product (bf16 from torch's kernels, fp32 from behemoth's int4 kernel) as (..., N)
    in x's dtype, plus the bias. A decoded token runs ~50 of these small products, each a handful of ops
    whose dispatch costs more than the arithmetic, so an fp32 model's bias is added by one mixed-dtype add
    (bf16 + fp32 computes in fp32: the same numbers as converting first) instead of a conversion and an
    add."""
    y = y.view(*x.shape[:-1], y.size(-1))
    if bias is None:
        return y.to(x.dtype)
    if x.dtype == bias.dtype:
        return torch.add(y, bias)  # promotes y exactly, one op
    return y.to(x.dtype) + bias.to(x.dtype)


class Int8WeightOnlyLinear(nn.Module):
    """y = x W^T + b with W stored as int8 per output channel (symmetric); bf16 compute, x's dtype out."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        # behemoth's kernel on AVX2 CPUs without AVX-512 (torch's is slow there), else torch's
        self.kernel = "behemoth" if int8_kernel.fits() else "aten"
        self.register_buffer("weight_int8", q.to(torch.int8).contiguous())  # (N, K)
        self.register_buffer("scales", scales.to(torch.bfloat16).contiguous())  # (N,)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8WeightOnlyLinear":
        w = linear.weight.detach().float()  # (N, K)
        scales = bf16_at_least((w.abs().amax(dim=1) / 127).clamp_min(1e-12))  # (N,), as the kernel reads it
        q = torch.round(w / scales.float().unsqueeze(1)).clamp(-127, 127).to(torch.int8)
        return cls(q, scales, linear.bias)

    def dequantized(self) -> torch.Tensor:
        """The float weight this module multiplies by, (N, K)."""
        return self.weight_int8.float() * self.scales.float().unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        matmul = int8_kernel.matmul if self.kernel == "behemoth" else torch.ops.aten._weight_int8pack_mm
        y = matmul(_matmul_input(x, self.in_features), self.weight_int8, self.scales)
        return _matmul_output(y, x, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel, "
            f"kernel={self.kernel}"
        )


def int4_codes_order(out_features: int, in_features: int) -> torch.Tensor:
    """For each nibble of the CPU int4 kernel's packed weight (bytes in order, low nibble first), the flat
    (N, K) position it holds. Found by packing the positions themselves, one hex digit at a time: the
    layout is the kernel's own (it may depend on the CPU's vector width), so it is measured, not assumed."""
    count = out_features * in_features
    positions = torch.arange(count, dtype=torch.int64)
    order = torch.zeros(count, dtype=torch.int64)
    for digit in range((max(count - 1, 1).bit_length() + 3) // 4):
        plane = ((positions >> (4 * digit)) & 15).to(torch.int32).view(out_features, in_features)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(plane, 1).flatten()
        nibbles = torch.stack([packed & 15, packed >> 4], dim=1).flatten().to(torch.int64)
        order |= nibbles << (4 * digit)
    return order


class Int4WeightOnlyLinear(nn.Module):
    """y = x W^T + b with W stored as 4-bit codes in groups of `group` inputs, each group with a bf16 scale
    and zero (asymmetric); bf16 compute, x's dtype out."""

    def __init__(
        self, codes: torch.Tensor, scales_and_zeros: torch.Tensor, group: int, bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        check_int4_shape("layer", self.out_features, self.in_features, group)
        self.group = group
        # behemoth's kernel where it runs here (AVX-512 BF16 or AVX2, K a multiple of 128), else torch's
        self.kernel = "behemoth" if int4_kernel.fits(*codes.shape, group) else "aten"
        sz = scales_and_zeros.to(torch.bfloat16)  # (K / group, N, 2)
        if self.kernel == "behemoth":
            self.register_buffer("weight_int4", int4_kernel.pack(codes))  # (N, K / 2) uint8
            self.register_buffer("scales_and_zeros", sz.transpose(0, 1).contiguous())  # (N, K / group, 2)
        else:
            # torch's kernel takes rows in multiples of 16 (GPT-2's 50257-word head is not): zero rows pad
            # it, and forward drops their outputs
            extra = -self.out_features % 16
            codes = torch.cat(
                [codes.to(torch.int32), codes.new_full((extra, self.in_features), 8).to(torch.int32)]
            )
            sz = torch.cat([sz, sz.new_zeros(sz.size(0), extra, 2)], dim=1)  # (K / group, N + extra, 2)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
            self.register_buffer("weight_int4", packed)  # (N + extra, K / 2) uint8, the kernel's layout
            self.register_buffer("scales_and_zeros", sz.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, group: int) -> "Int4WeightOnlyLinear":
        N, K = linear.weight.shape
        check_int4_shape("layer", N, K, group)
        w = linear.weight.detach().float().view(N, K // group, group)  # (N, G, group)
        low, high = w.amin(dim=-1), w.amax(dim=-1)  # (N, G)
        scales = bf16_at_least(((high - low) / 15).clamp_min(1e-8))
        zeros = (low + 8 * scales.float()).to(torch.bfloat16)  # w = (q - 8) * s + z puts q = 0 at the minimum
        s, z = scales.float().unsqueeze(-1), zeros.float().unsqueeze(-1)  # as the kernel will read them
        codes = torch.round((w - z) / s + 8).clamp(0, 15).to(torch.uint8).view(N, K)
        scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1)  # (G, N, 2)
        return cls(codes, scales_and_zeros, group, linear.bias)

    def codes(self) -> torch.Tensor:
        """The (N, K) 4-bit codes, uint8 in [0, 15], read back out of the kernel's packed layout."""
        if self.kernel == "behemoth":
            return int4_kernel.unpack(self.weight_int4)
        packed = self.weight_int4.flatten()
        rows = self.weight_int4.size(0)  # with the padding rows
        nibbles = torch.stack([packed & 15, packed >> 4], dim=1).flatten()
        codes = torch.empty(rows * self.in_features, dtype=torch.uint8)
        codes[int4_codes_order(rows, self.in_features)] = nibbles
        return codes.view(rows, self.in_features)[: self.out_features]

    def stored_scales_and_zeros(self) -> torch.Tensor:
        """(K / group, N, 2) bf16, without the padding rows."""
        if self.kernel == "behemoth":
            return self.scales_and_zeros.transpose(0, 1)
        return self.scales_and_zeros[:, : self.out_features]

    def dequantized(self) -> torch.Tensor:
        """The float weight this module multiplies by, (N, K)."""
        N, K = self.out_features, self.in_features
        sz = self.stored_scales_and_zeros().float().transpose(0, 1)  # (N, G, 2)
        q = self.codes().float().view(N, K // self.group, self.group)
        return ((q - 8) * sz[..., :1] + sz[..., 1:]).view(N, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        if self.kernel == "behemoth":
            y = int4_kernel.matmul(
                _matmul_input(x, self.in_features), self.weight_int4, self.scales_and_zeros, self.group
            )
            return _matmul_output(y, x, self.bias)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            _matmul_input(x, self.in_features), self.weight_int4, self.group, self.scales_and_zeros
        )
        if y.size(1) != self.out_features:  # drop the padding rows' outputs
            y = y[:, : self.out_features].contiguous()
        return _matmul_output(y, x, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, int4 group={self.group}, "
            f"kernel={self.kernel}"
        )


WEIGHT_ONLY_TYPES = (Int8WeightOnlyLinear, Int4WeightOnlyLinear)


def check_int4_shape(name: str, out_features: int, in_features: int, group: int) -> None:
    if group not in GROUP_SIZES:
        raise WeightOnlyError(f"compress.group = {group}: int4 groups are 32, 64 or 128 inputs")
    if in_features % group:
        raise WeightOnlyError(
            f"{name}: {in_features} inputs are not a multiple of compress.group = {group} (try a smaller one)"
        )


def target_linears(model: nn.Module, head: bool = False) -> list[str]:
    """The names of the Linear layers to quantize: all of them, except a head tied to the embedding (or
    any output head `lm_head`) unless `head` is set."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (head or name.split(".")[-1] != "lm_head")
    ]


def quantize_weight_only(model: nn.Module, bits: int, group: int = 128, head: bool = False) -> nn.Module:
    """A copy of `model` whose Linear layers (the head too with `head`) run on int8 or int4 weights.

    Quantizing a head tied to the embedding unties them: the head gets its own quantized copy and the
    embedding keeps its float weights."""
    if bits not in BITS:
        raise WeightOnlyError(f"weight-only bits = {bits}: expected 8 or 4")
    names = target_linears(model, head)
    if bits == 4:
        for name in names:
            linear = model.get_submodule(name)
            check_int4_shape(name, linear.out_features, linear.in_features, group)
    quantized = copy.deepcopy(model).eval()
    for name in names:
        linear = quantized.get_submodule(name)
        new = (
            Int8WeightOnlyLinear.from_linear(linear)
            if bits == 8
            else Int4WeightOnlyLinear.from_linear(linear, group)
        )
        parent, _, child = name.rpartition(".")
        setattr(quantized.get_submodule(parent) if parent else quantized, child, new)
    return quantized


def weight_only_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weight-only quantized layers of `model`, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_ONLY_TYPES)}
