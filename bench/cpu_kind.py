"""Which CPU a benchmark ran on, and which of behemoth's low-bit kernels it used there: decode speed and the
low-bit rows' numbers depend on the instruction set the kernels get, so each CPU kind keeps its own result
file (generate.json on AVX-512 BF16, generate_avx2.json on AVX2 + FMA without it, ...)."""

from pathlib import Path

from behemoth.compression import int4_kernel, int8_kernel, kernel_build


def cpu_kind_suffix() -> str:
    """ "" on CPUs with AVX-512 BF16, else "_avx2" or "_other": the suffix of a result file's name."""
    builds = kernel_build.runnable(int4_kernel.INSTRUCTION_SETS)  # the int4 kernel's builds this CPU runs
    if "avx512bf16" in builds:
        return ""
    return "_avx2" if builds else "_other"


def cpu_model() -> str:
    """The CPU's model name: bound and speeds depend on it (this project's machines have varied)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def low_bit_kernels() -> dict[str, str]:
    """The cpu model and the int4 / int8 kernels weight-only layers built now run on, for a result file."""
    return {
        "cpu": cpu_model(),
        "int4_kernel": f"behemoth (compression/int4_gemv.c, {int4_kernel.variant()})"
        if int4_kernel.library()
        else "torch's",
        "int8_kernel": "behemoth (compression/int8_gemv.c, avx2)" if int8_kernel.library() else "torch's",
    }
