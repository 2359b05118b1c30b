"""Checkpoints: weights as safetensors, the rest (optimizer, scheduler, progress, RNG) as a tensor-only
file read back with torch.load(weights_only=True). Written atomically, pruned to the last N.

Layout: <run>/checkpoints/step-00000420/{model.safetensors, state.pt} and <run>/checkpoints/latest.
"""

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from behemoth.errors import RunDirError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + fsync + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors keyed without torch.compile's `_orig_mod.` prefix; shared tensors cloned."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        key = key.replace("_orig_mod.", "")
        tensor = tensor.detach().cpu()
        if tensor.data_ptr() in seen:  # tied weights (e.g. GPT's lm_head): safetensors refuses aliases
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        out[key] = tensor.contiguous()
    return out


def save_weights(model: nn.Module, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    save_file(plain_state_dict(model), tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    target = getattr(model, "_orig_mod", model)
    target.load_state_dict(load_file(str(path)))


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    random.setstate(_literal_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _literal_tuple(text: str) -> tuple:
    import ast

    return ast.literal_eval(text)  # python's RNG state is a tuple of ints: safe to parse, no pickle


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, state: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint `step` atomically (build in a temp folder, then rename) and keep the last N."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    save_weights(model, tmp / "model.safetensors")
    with open(tmp / "state.pt", "wb") as handle:
        torch.save({**state, "rng": rng_state()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / "latest", final.name)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into `model`; return the saved state (RNG is restored here too)."""
    if not (path / "model.safetensors").is_file() or not (path / "state.pt").is_file():
        raise RunDirError(f"checkpoint {path} is incomplete (model.safetensors or state.pt missing)")
    load_weights(model, path / "model.safetensors")
    state = torch.load(path / "state.pt", weights_only=True)
    set_rng_state(state.pop("rng"))
    return state
