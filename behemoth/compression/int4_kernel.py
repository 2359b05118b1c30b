"""behemoth's weight-only int4 matmul kernel (int4_gemv.c), for decoding on x86-64 CPUs with AVX-512 BF16
or AVX2 + FMA.

torch's own int4 CPU kernel is compute-bound at batch 1 on a small machine; this one expands codes with a
shift and a bitwise op and multiplies with bf16 dot-product instructions (AVX-512 BF16) or with byte
multiply-adds against the input rounded to int8 per 128 inputs (AVX2, llama.cpp's scheme), so it streams the
weights at close to memory speed (int4_gemv.c says how, and what the int8 input costs in accuracy). It is
compiled from the package's C source on first use for the best instruction set the CPU has
(kernel_build.py). Where it cannot run (not x86-64, neither instruction set, no compiler, or
`BEHEMOTH_INT4_KERNEL=aten`), `library()` is None and weight_only.py uses torch's kernel;
`BEHEMOTH_INT4_KERNEL=avx2` builds the AVX2 one on an AVX-512 CPU.

`behemoth::int4_matmul` is a torch op, so `torch.compile` keeps it in its graph; eager calls skip the
dispatcher (`matmul`) because a decoded token makes ~50 of them.
"""

import ctypes
import functools
from pathlib import Path

import torch

from behemoth.compression import kernel_build

SOURCE = Path(__file__).with_name("int4_gemv.c")
INSTRUCTION_SETS = ("avx512bf16", "avx2")  # the builds int4_gemv.c has, best first
SWITCH = "BEHEMOTH_INT4_KERNEL"  # "aten": always torch's kernel; an instruction set: that build, if it runs
GROUPS = (32, 64, 128)
BLOCK = 128  # inputs per packed block: K must be a multiple


def variant() -> str | None:
    """The kernel build that runs on this CPU (the best one, or the one BEHEMOTH_INT4_KERNEL names), or
    None for torch's kernel."""
    return kernel_build.choose(SWITCH, INSTRUCTION_SETS)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None where it cannot run here (then torch's kernel is used)."""
    lib = kernel_build.load(SOURCE, variant())
    if lib is not None:
        pointers, sizes = [ctypes.c_void_p] * 4, [ctypes.c_long] * 4
        lib.int4_matmul.argtypes, lib.int4_matmul.restype = pointers + sizes, ctypes.c_int
        lib.int4_matvec.argtypes, lib.int4_matvec.restype = pointers + sizes[:3], ctypes.c_int
    return lib


torch_kernel_only = kernel_build.torch_kernels_only  # the name the int4 layers' callers use


def fits(out_features: int, in_features: int, group: int) -> bool:
    """Whether a layer of this shape can use the kernel here."""
    if kernel_build.only_torch_kernels() or in_features % BLOCK or group not in GROUPS:
        return False
    return library() is not None


def pack(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in [0, 15] -> (N, K / 2) uint8 in the kernel's layout (see int4_gemv.c)."""
    N, K = codes.shape
    planes = codes.to(torch.int32).view(N, K // BLOCK, 4, BLOCK // 4)
    lanes = planes[:, :, 0] | planes[:, :, 1] << 4 | planes[:, :, 2] << 8 | planes[:, :, 3] << 12
    return lanes.to(torch.uint16).view(torch.uint8).reshape(N, K // 2).contiguous()


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack`: (N, K / 2) uint8 -> (N, K) uint8 codes."""
    N, K = packed.size(0), packed.size(1) * 2
    lanes = packed.contiguous().view(torch.uint16).to(torch.int32).view(N, K // BLOCK, 1, BLOCK // 4)
    planes = (lanes >> torch.tensor([0, 4, 8, 12]).view(1, 1, 4, 1)) & 15
    return planes.reshape(N, K).to(torch.uint8)


def matmul(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, group: int) -> torch.Tensor:
    """(M, K) bf16 @ the layer's weights^T -> (M, N) fp32. Eager calls without gradients skip the
    dispatcher (a decoded token makes ~50 of them); a compiled graph calls the op."""
    if x.requires_grad and torch.is_grad_enabled():
        return _WithInputGradient.apply(x, packed, scales_zeros, group)
    if torch.compiler.is_compiling():
        return torch.ops.behemoth.int4_matmul(x, packed, scales_zeros, group)
    return _run(x, packed, scales_zeros, group)


def _run(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, group: int) -> torch.Tensor:
    x = x.contiguous()
    (M, K), N = x.shape, packed.size(0)
    y = torch.empty(M, N, dtype=torch.float32)
    args = (packed.data_ptr(), scales_zeros.data_ptr(), x.data_ptr(), y.data_ptr())
    lib = library()
    status = lib.int4_matvec(*args, N, K, group) if M == 1 else lib.int4_matmul(*args, M, N, K, group)
    if status != 0:
        raise MemoryError("int4 kernel: could not allocate its scratch buffer")
    return y


# The op is defined with torch.library.Library, not the custom_op decorator: a compiled decode step calls it
# ~50 times per token, and the decorator's Python wrappers (its autograd kernel runs even under no_grad)
# cost ~10 us per call against ~2.5 us here (measured on a 768 x 768 layer; the kernel itself takes ~10 us).
# Gradients go through _WithInputGradient instead.
_OPS = torch.library.Library("behemoth", "DEF")
_OPS.define("int4_matmul(Tensor x, Tensor packed, Tensor scales_zeros, int group) -> Tensor")
_OPS.impl("int4_matmul", _run, "CPU")


@torch.library.register_fake("behemoth::int4_matmul")
def _(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, group: int) -> torch.Tensor:
    return x.new_empty(x.size(0), packed.size(0), dtype=torch.float32)


def dequantize(packed: torch.Tensor, scales_zeros: torch.Tensor, group: int) -> torch.Tensor:
    """The (N, K) fp32 weight the kernel multiplies by: (q - 8) s + z."""
    codes = unpack(packed).float()
    N, K = codes.shape
    sz = scales_zeros.float()  # (N, K / group, 2)
    return ((codes.view(N, K // group, group) - 8) * sz[..., :1] + sz[..., 1:]).view(N, K)


class _WithInputGradient(torch.autograd.Function):
    """The op with dy/dx = W, so gradients reach the input (e.g. for attributions); the weights are frozen."""

    @staticmethod
    def forward(x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, group: int):
        return torch.ops.behemoth.int4_matmul(x, packed, scales_zeros, group)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, packed, scales_zeros, group = inputs
        ctx.save_for_backward(packed, scales_zeros)
        ctx.group = group

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        packed, scales_zeros = ctx.saved_tensors
        grad_x = grad.float() @ dequantize(packed, scales_zeros, ctx.group)
        return grad_x.to(torch.bfloat16), None, None, None
