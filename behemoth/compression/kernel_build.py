"""Compiling behemoth's C kernels (int4_gemv.c, int8_gemv.c) for this CPU and loading them.

Each kernel is compiled from the package's C source with the system's C compiler on first use, for the best
instruction set the CPU has that the kernel is written for, into the user's cache
(`$XDG_CACHE_HOME/behemoth/kernels`, private to the user; keyed by the source, flags and compiler, written
atomically), and loaded with ctypes: no code from anywhere else is loaded. A kernel that cannot be built or
run here loads as None, and its layers use torch's kernel. Why C: no installable library ships fast x86
weight-only decode kernels for CPUs (each source file says what it measured against torch's).
"""

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from behemoth.cpu import cpu_flags

COMMON_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")
INSTRUCTION_SETS = {  # name: (the CPU flags it needs in /proc/cpuinfo, compiler flags)
    "avx512bf16": (
        {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"},
        ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"),
    ),
    "avx2": ({"avx2", "fma"}, ("-mavx2", "-mfma")),
}


def runnable(supported: Sequence[str]) -> list[str]:
    """Those of a kernel's instruction sets (best first) that this CPU runs."""
    flags = cpu_flags()
    return [name for name in supported if INSTRUCTION_SETS[name][0] <= flags]


def choose(switch: str, supported: Sequence[str]) -> str | None:
    """The instruction set to build a kernel for: the best of `supported` (best first) that runs here, or
    the one the environment variable `switch` names; None for torch's kernel (`switch`=aten, or none runs)."""
    wanted = os.environ.get(switch, "").lower()
    if wanted == "aten":
        return None
    if wanted and wanted not in supported:
        raise ValueError(f"{switch}={wanted!r}: expected aten or one of {', '.join(supported)}")
    here = runnable(supported)
    if wanted:
        return wanted if wanted in here else None
    return here[0] if here else None


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


def build(source: Path, compiler: str, instruction_set: str) -> Path:
    """The library compiled from `source` for `instruction_set`, from the cache or compiled now (to a
    temporary name, then renamed)."""
    flags = (*COMMON_FLAGS, *INSTRUCTION_SETS[instruction_set][1])
    key = hashlib.sha256(source.read_bytes() + " ".join((compiler, *flags)).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{instruction_set}-{key}.so"
    if not target.is_file():
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as scratch:
            pass
        try:
            command = [compiler, *flags, str(source), "-o", scratch.name]
            subprocess.run(command, check=True, capture_output=True, timeout=120)
            os.replace(scratch.name, target)
        finally:
            Path(scratch.name).unlink(missing_ok=True)
    return target


def load(source: Path, instruction_set: str | None) -> ctypes.CDLL | None:
    """The kernel compiled from `source` and loaded, or None (no instruction set, no compiler, or it failed
    to build or load)."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if instruction_set is None or compiler is None:
        return None
    try:
        return ctypes.CDLL(str(build(source, compiler, instruction_set)))
    except (OSError, subprocess.SubprocessError):
        return None


_torch_kernels_only = False


@contextlib.contextmanager
def torch_kernels_only() -> Iterator[None]:
    """Low-bit layers built inside use torch's kernels (to compare them with ours on the same weights)."""
    global _torch_kernels_only
    before, _torch_kernels_only = _torch_kernels_only, True
    try:
        yield
    finally:
        _torch_kernels_only = before


def only_torch_kernels() -> bool:
    return _torch_kernels_only
