"""behemoth's weight-only int8 matmul kernel (int8_gemv.c), for decoding on x86-64 CPUs with AVX2 + FMA that
lack AVX-512.

torch's `_weight_int8pack_mm` read int8 weights at 5.5 GB/s on a 2-core EPYC without AVX-512 (slower than
fp32 `F.linear` read fp32 ones); this kernel multiplies sixteen codes at a time by the input rounded to
int16 with integer multiply-adds (int8_gemv.c says why and how). It runs on the codes as
Int8WeightOnlyLinear stores them, so nothing is repacked. On CPUs with AVX-512, torch's kernel (and
inductor's int8 templates under torch.compile) were measured fast (bench/results/generate.json), so there
torch's stays unless `BEHEMOTH_INT8_KERNEL=avx2` asks for this one; `BEHEMOTH_INT8_KERNEL=aten` keeps
torch's everywhere. Compiled on first use (kernel_build.py).

`behemoth::int8_matmul` is a torch op, so `torch.compile` keeps it in its graph; eager calls skip the
dispatcher (`matmul`) because a decoded token makes ~50 of them.
"""

import ctypes
import functools
import os
from pathlib import Path

import torch

from behemoth.compression import kernel_build
from behemoth.cpu import cpu_flags

SOURCE = Path(__file__).with_name("int8_gemv.c")
INSTRUCTION_SETS = ("avx2",)
SWITCH = "BEHEMOTH_INT8_KERNEL"  # "aten": torch's kernel; "avx2": this one, even beside AVX-512


def variant() -> str | None:
    """ "avx2" where this kernel is used here, else None (torch's kernel)."""
    chosen = kernel_build.choose(SWITCH, INSTRUCTION_SETS)
    if chosen and not os.environ.get(SWITCH) and "avx512f" in cpu_flags():
        return None  # unless asked for: torch's int8 kernels are the fast ones there
    return chosen


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None where it is not used here (then torch's kernel is)."""
    lib = kernel_build.load(SOURCE, variant())
    if lib is not None:
        lib.int8_matmul.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3
        lib.int8_matmul.restype = ctypes.c_int
    return lib


def fits() -> bool:
    """Whether int8 layers built now use this kernel."""
    return not kernel_build.only_torch_kernels() and library() is not None


def matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(M, K) bf16 @ (q (N, K) int8 * scales (N,) bf16)^T -> (M, N) fp32. Eager calls without gradients
    skip the dispatcher; a compiled graph calls the op."""
    if x.requires_grad and torch.is_grad_enabled():
        return _WithInputGradient.apply(x, q, scales)
    if torch.compiler.is_compiling():
        return torch.ops.behemoth.int8_matmul(x, q, scales)
    return _run(x, q, scales)


def _run(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    (M, K), N = x.shape, q.size(0)
    y = torch.empty(M, N, dtype=torch.float32)
    if library().int8_matmul(q.data_ptr(), scales.data_ptr(), x.data_ptr(), y.data_ptr(), M, N, K) != 0:
        raise MemoryError("int8 kernel: could not allocate its scratch buffer")
    return y


# torch.library.Library rather than the custom_op decorator, for the per-call cost (see int4_kernel.py)
_OPS = torch.library.Library("behemoth", "FRAGMENT")
_OPS.define("int8_matmul(Tensor x, Tensor q, Tensor scales) -> Tensor")
_OPS.impl("int8_matmul", _run, "CPU")


@torch.library.register_fake("behemoth::int8_matmul")
def _(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.size(0), q.size(0), dtype=torch.float32)


class _WithInputGradient(torch.autograd.Function):
    """The op with dy/dx = W, so gradients reach the input (e.g. for attributions); the weights are frozen."""

    @staticmethod
    def forward(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor):
        return torch.ops.behemoth.int8_matmul(x, q, scales)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, q, scales = inputs
        ctx.save_for_backward(q, scales)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, scales = ctx.saved_tensors
        grad_x = grad.float() @ (q.float() * scales.float().unsqueeze(1))
        return grad_x.to(torch.bfloat16), None, None
