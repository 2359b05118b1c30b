"""Checkpoints: weights as safetensors, the rest (optimizer, scheduler, progress, RNG) as a tensor-only
file read back with torch.load(weights_only=True). Written atomically, pruned to the last N.

Layout: <run>/checkpoints/step-00000420/{model.safetensors, state.pt} and <run>/checkpoints/latest.
Sharded strategies (fsdp, pipeline) write step-00000420/{dcp/, state.pt} instead: every rank writes its
shards with torch.distributed.checkpoint (see behemoth.distributed.dcp). Either kind loads into any
strategy at any world size: model and optimizer state are keyed by parameter name, not position.
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

from behemoth.distributed import DistEnv, barrier, holds_shard
from behemoth.errors import RunDirError
from behemoth.files import atomic_write_text, fsync_dir


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
    write_safetensors(plain_state_dict(model), path)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Atomically: temp file in the same folder, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    save_file(tensors, tmp)
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


def named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() keyed by parameter name instead of position: loads into any strategy."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(getattr(model, "_orig_mod", model), optimizer)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep_last: int,
    env: DistEnv | None = None,
) -> Path:
    """Write checkpoint `step` atomically (build in a temp folder, then rename) and keep the last N.

    Every rank calls this. Unsharded (single, ddp): rank 0 writes model.safetensors + state.pt (DDP replicas
    are equal). Sharded (the model holds part of the weights: fsdp, pipeline): every rank writes its shards
    into dcp/, then rank 0 adds state.pt and renames; the other ranks return once their part is on disk (the
    caller's barrier waits for the rename).
    """
    main, sharded = env is None or env.is_main, holds_shard(model)
    root = run_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    if sharded:
        from behemoth.distributed.dcp import save_sharded

        tmp = root / f".tmp-{final.name}"  # one name for every rank (across nodes: a shared filesystem)
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(env)
        groups = save_sharded(tmp / "dcp", model, optimizer, env is not None and env.distributed)
        state = {**state, "param_groups": groups}
    if not main:
        return final
    if not sharded:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        save_weights(model, tmp / "model.safetensors")
        state = {**state, "optimizer": named_optimizer_state(model, optimizer)}
    with open(tmp / "state.pt", "wb") as handle:
        torch.save({**state, "rng": rng_state()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
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


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv | None = None
) -> dict[str, Any]:
    """Load weights and optimizer state (either kind of checkpoint, any strategy); return the rest of the
    saved state. This process's RNG is restored here too. Every rank calls it."""
    if not (path / "state.pt").is_file() or not (
        (path / "model.safetensors").is_file() or (path / "dcp").is_dir()
    ):
        raise RunDirError(f"checkpoint {path} is incomplete (model.safetensors or dcp/, or state.pt missing)")
    state = torch.load(path / "state.pt", weights_only=True)
    if (path / "dcp").is_dir():
        from behemoth.distributed.dcp import load_sharded

        load_sharded(
            path / "dcp", model, optimizer, state.pop("param_groups"), env is not None and env.distributed
        )
    else:
        load_full_state(model, optimizer, load_file(str(path / "model.safetensors")), state.pop("optimizer"))
    set_rng_state(state.pop("rng"))
    return state


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Whole-model weights and optimizer state into a plain, DDP, FSDP-sharded or pipeline-stage model
    (each rank keeps the part it holds)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    target = getattr(model, "_orig_mod", model)
    names = list(target.state_dict())
    missing = [name for name in names if name not in weights]
    if missing:
        raise RunDirError(f"checkpoint does not fit this model: no weights for {missing[0]}")
    # FSDP: every rank holds the whole state and keeps its shard of it; others load it as it is
    options = StateDictOptions(full_state_dict=hasattr(target, "set_requires_gradient_sync"))
    set_model_state_dict(target, {name: weights[name] for name in names}, options=options)
    if all(isinstance(key, int) for key in optimizer_state["state"]):  # written before names were used
        optimizer.load_state_dict(optimizer_state)
    else:
        set_optimizer_state_dict(target, optimizer, optimizer_state, options=options)


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The whole model's weights from a checkpoint of either kind, as CPU tensors keyed by name."""
    if (path / "dcp").is_dir():
        from behemoth.distributed.dcp import read_sharded_weights

        return read_sharded_weights(path / "dcp")
    if not (path / "model.safetensors").is_file():
        raise RunDirError(f"checkpoint {path} is incomplete (no model.safetensors or dcp/)")
    return load_file(str(path / "model.safetensors"))


def save_final_weights(model: nn.Module, run_dir: Path, env: DistEnv | None = None) -> None:
    """<run>/model.safetensors, written by rank 0; a sharded model's from its last checkpoint,
    consolidated."""
    if env is not None and not env.is_main:
        return
    if holds_shard(model):
        write_safetensors(checkpoint_weights(latest_checkpoint(run_dir)), run_dir / "model.safetensors")
    else:
        save_weights(model, run_dir / "model.safetensors")
