"""Is a checkpoint what was saved? A manifest (size and sha256 of every file) written last, and the checks
that decide whether a folder may be loaded, each naming the file at fault."""

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from behemoth.files import atomic_write_text, fsync_dir

MANIFEST = "manifest.json"
FORMAT = 2  # state.pt's "checkpoint_format" when a manifest was written (absent: written before manifests)


def write_manifest(directory: Path, step: int) -> None:
    """Size and sha256 of every file under `directory`, written last and atomically once everything else is
    on disk (directories fsynced too): a checkpoint whose manifest checks out holds exactly what was saved."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    for folder in sorted({p.parent for p in files}):
        fsync_dir(folder)
    listed = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    }
    text = json.dumps({"format": FORMAT, "step": step, "files": listed}, indent=1)
    atomic_write_text(directory / MANIFEST, text)  # fsyncs `directory` after the rename


def sha256_file(path: Path) -> str:
    """Streamed: a checkpoint file of many GB needs no more memory than a small one."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` must not be loaded, naming the file at fault; None if it may be.

    With a manifest, every file it lists must be there with its size and sha256 (intact checkpoints are
    remembered by their files' size, mtime and inode, so a resume hashes each file once). Without one, only
    a checkpoint written before manifests (state.pt without the format mark) passes, on its layout alone.
    """
    if (path / MANIFEST).is_file():
        return _manifest_problem(path)
    return _legacy_problem(path)


_VERIFIED: dict[Path, tuple] = {}  # checkpoint folder -> fingerprint of its files when they checked out


def _manifest_problem(path: Path) -> str | None:
    manifest = path / MANIFEST
    try:
        listed = json.loads(manifest.read_text())["files"]
        problem = _layout_problem(path, set(listed), manifest)
        if problem is not None:
            return problem
        fingerprint = _fingerprint(path, listed)
        if fingerprint is not None and _VERIFIED.get(path) == fingerprint:
            return None
        for name, entry in sorted(listed.items()):
            problem = _entry_problem(path, name, entry["size"], entry["sha256"])
            if problem is not None:
                return problem
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{manifest} is unreadable or malformed ({type(exc).__name__}: {exc})"
    _VERIFIED[path] = fingerprint
    return None


def _layout_problem(path: Path, names: set[str], source: Path) -> str | None:
    if "state.pt" not in names:
        return f"{path / 'state.pt'} is not in {source.name}"
    if "model.safetensors" not in names and "dcp/.metadata" not in names:
        return f"{path / 'model.safetensors'} (or dcp/) is not in {source.name}"
    return None


def _fingerprint(path: Path, listed: dict[str, Any]) -> tuple | None:
    try:
        stats = [(name, (path / name).stat()) for name in [MANIFEST, *sorted(listed)]]
    except OSError:
        return None  # a file is missing: the full check says which
    return tuple((name, s.st_size, s.st_mtime_ns, s.st_ino) for name, s in stats)


def _entry_problem(path: Path, name: str, size: int, digest: str) -> str | None:
    if Path(name).is_absolute() or ".." in Path(name).parts:
        return f"{path / MANIFEST} lists {name!r}, outside the checkpoint"
    file = path / name
    if not file.is_file():
        return f"{file} is missing"
    if file.stat().st_size != size:
        return f"{file} has {file.stat().st_size} bytes, the manifest says {size}"
    if sha256_file(file) != digest:
        return f"{file} does not match its sha256 in the manifest"
    return None


def _legacy_problem(path: Path) -> str | None:
    """A folder without a manifest: usable only if written before manifests and complete; a checkpoint whose
    state.pt carries the format mark lost its manifest, so it is not trusted."""
    state = path / "state.pt"
    weights = "dcp/.metadata" if (path / "dcp").is_dir() else "model.safetensors"
    for name in ("state.pt", weights):
        if not (path / name).is_file():
            return f"{path / MANIFEST} and {path / name} are missing"
    try:
        marked = "checkpoint_format" in torch.load(state, weights_only=True, mmap=True)
    except Exception as exc:  # any failure to read it means: do not use it
        return f"{state} is unreadable ({type(exc).__name__}: {exc})"
    if marked:
        return f"{path / MANIFEST} is missing (state.pt says one was written)"
    return _safetensors_problem(path / weights) if weights == "model.safetensors" else None


def _safetensors_problem(file: Path) -> str | None:
    """A truncated or padded safetensors file: its header's offsets must end exactly at the file's end."""
    try:
        with open(file, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length)) if 0 < length < 100_000_000 else None
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        return f"{file} has an unreadable header ({type(exc).__name__})"
    if file.stat().st_size != 8 + length + end:
        return f"{file} has {file.stat().st_size} bytes, its header says {8 + length + end}"
    return None
