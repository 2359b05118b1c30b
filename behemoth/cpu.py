"""What this machine's CPU can do, read from /proc/cpuinfo: which instruction sets behemoth's kernels can be
built for, and whether bf16 arithmetic is native (without it torch runs bf16 matmuls several times slower
than fp32)."""

import functools
import platform
from pathlib import Path

# any one of these gives torch native bf16 matmuls on x86-64 (AVX-512 BF16, AMX)
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where they cannot be read, or not on x86-64)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return frozenset()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    lines = [line for line in info.splitlines() if line.startswith("flags")]
    return frozenset(lines[0].split(":", 1)[1].split()) if lines else frozenset()


def lacks_native_bf16() -> bool:
    """True on an x86-64 CPU known to have no bf16 instructions (False where the flags cannot be read)."""
    flags = cpu_flags()
    return bool(flags) and not flags & BF16_FLAGS
