"""Give freed memory back to the operating system at once (glibc), so peak RSS tracks what is in use.

glibc serves large allocations with mmap, but after the first large free it raises that threshold (up to
32 MiB): later temporaries of that size come from the heap and, once freed, stay resident. A training step
frees many such temporaries (an 8-bit optimizer step dequantizes each parameter's moments to fp32; autograd
frees activations), so the process keeps ~4 bytes per parameter it no longer uses (measured in
bench/memory.py). Fixing the threshold makes every allocation of 64 KiB or more its own mapping,
unmapped when freed. The cost is a page fault per new large tensor page (small next to a step's matmuls).
"""

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h); setting it also turns glibc's dynamic threshold off
THRESHOLD = 64 * 1024


def return_freed_memory(threshold: int = THRESHOLD) -> bool:
    """mallopt(M_MMAP_THRESHOLD, threshold) for this process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no libc found, or one without mallopt (musl, macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
