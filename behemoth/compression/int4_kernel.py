"""behemoth's weight-only int4 matmul kernel (int4_gemv.c), for decoding on x86-64 CPUs with AVX-512 BF16
or AVX2 + FMA.

torch's own int4 CPU kernel is compute-bound at batch 1 on a small machine; this one expands codes with a
shift and a bitwise op and multiplies with bf16 dot-product instructions (AVX-512 BF16) or fp32 FMAs (AVX2),
so it streams the weights at close to memory speed (int4_gemv.c says how). It is compiled from the package's
C source with the system's C compiler on first use, for the best instruction set the CPU has, into the
user's cache (`$XDG_CACHE_HOME/behemoth/kernels`, private to the user; keyed by the source, flags and
compiler, written atomically), and loaded with ctypes: no code from anywhere else is loaded. Where it cannot
run (not x86-64, neither instruction set, no compiler, or `BEHEMOTH_INT4_KERNEL=aten`), `library()` is None
and weight_only.py uses torch's kernel; `BEHEMOTH_INT4_KERNEL=avx2` builds the AVX2 one on an AVX-512 CPU.

`behemoth::int4_matmul` is a torch op, so `torch.compile` keeps it in its graph; eager calls skip the
dispatcher (`matmul`) because a decoded token makes ~50 of them.
"""

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("int4_gemv.c")
COMMON_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
VARIANTS = {  # instruction set: (the CPU flags it needs in /proc/cpuinfo, compiler flags), best first
    "avx512bf16": (
        {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"},
        ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"),
    ),
    "avx2": ({"avx2", "fma"}, ("-mavx2", "-mfma")),
}
SWITCH = "BEHEMOTH_INT4_KERNEL"  # "aten": always torch's kernel; a variant's name: that one, if it runs here
GROUPS = (32, 64, 128)
BLOCK = 128  # inputs per packed block: K must be a multiple


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where they cannot be read, or not on x86-64)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return set()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    lines = [line for line in info.splitlines() if line.startswith("flags")]
    return set(lines[0].split(":", 1)[1].split()) if lines else set()


def variant() -> str | None:
    """The kernel build that runs on this CPU (the best one, or the one BEHEMOTH_INT4_KERNEL names), or
    None for torch's kernel."""
    wanted = os.environ.get(SWITCH, "").lower()
    if wanted == "aten":
        return None
    if wanted and wanted not in VARIANTS:
        raise ValueError(f"{SWITCH}={wanted!r}: expected aten or one of {', '.join(VARIANTS)}")
    flags = cpu_flags()
    runnable = [name for name, (needs, _) in VARIANTS.items() if needs <= flags]
    if wanted:
        return wanted if wanted in runnable else None
    return runnable[0] if runnable else None


def cache_dir() -> Path:
    """Where compiled kernels are kept: the user's cache, if only the user can write to it."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "behemoth" / "kernels"
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = root.stat()
        if os.access(root, os.W_OK) and info.st_uid == os.getuid() and not info.st_mode & 0o022:
            return root
    except OSError:
        pass
    # an unwritable cache, or one someone else could write to: compile for this process only
    return Path(tempfile.mkdtemp(prefix="behemoth-kernels-"))


def build(compiler: str, instruction_set: str) -> Path:
    """The compiled library for `instruction_set` (a VARIANTS key), from the cache or compiled now (to a
    temporary name, then renamed)."""
    flags = (*COMMON_FLAGS, *VARIANTS[instruction_set][1])
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *flags)).encode()).hexdigest()[:16]
    target = cache_dir() / f"int4_gemv-{instruction_set}-{key}.so"
    if not target.is_file():
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as scratch:
            pass
        try:
            command = [compiler, *flags, str(SOURCE), "-o", scratch.name]
            subprocess.run(command, check=True, capture_output=True, timeout=120)
            os.replace(scratch.name, target)
        finally:
            Path(scratch.name).unlink(missing_ok=True)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, or None where it cannot run here (then torch's kernel is used)."""
    instruction_set = variant()
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if instruction_set is None or compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(build(compiler, instruction_set)))
    except (OSError, subprocess.SubprocessError):
        return None
    pointers, sizes = [ctypes.c_void_p] * 4, [ctypes.c_long] * 4
    lib.int4_matmul.argtypes, lib.int4_matmul.restype = pointers + sizes, ctypes.c_int
    lib.int4_matvec.argtypes, lib.int4_matvec.restype = pointers + sizes[:3], ctypes.c_int
    return lib


_torch_kernel_only = False


@contextlib.contextmanager
def torch_kernel_only() -> Iterator[None]:
    """Int4 layers built inside use torch's kernel (to compare the two on the same weights)."""
    global _torch_kernel_only
    before, _torch_kernel_only = _torch_kernel_only, True
    try:
        yield
    finally:
        _torch_kernel_only = before


def fits(out_features: int, in_features: int, group: int) -> bool:
    """Whether a layer of this shape can use the kernel here."""
    if _torch_kernel_only or in_features % BLOCK or group not in GROUPS:
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
