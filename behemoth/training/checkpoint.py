"""Checkpoints: weights as safetensors, the rest (optimizer, scheduler, progress, RNG) as a tensor-only
file read back with torch.load(weights_only=True). Pruned to the last N.

Layout: <run>/checkpoints/step-00000420/{model.safetensors, state.pt, manifest.json} and
<run>/checkpoints/latest (the name of the newest committed checkpoint). Sharded strategies (fsdp,
pipeline) write step-00000420/{dcp/, state.pt, manifest.json} instead: every rank writes its shards with
torch.distributed.checkpoint (see behemoth.distributed.dcp). Either kind loads into any strategy at any
world size: model and optimizer state are keyed by parameter name, not position.

A kill at any instant leaves a loadable checkpoint. A checkpoint is built in a `.tmp-*` folder, its
manifest.json (size and sha256 of every file) written last, then renamed into place, and only then does
`latest` name it. A rewrite of a step already on disk goes in under a fresh name (step-00000420-2) and
`latest` moves to it before the earlier folder is deleted; it then takes the usual name. Loading checks the
manifest and falls back to the newest intact older checkpoint.
"""

import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from behemoth.distributed import DistEnv, barrier, holds_shard
from behemoth.errors import RunDirError
from behemoth.files import atomic_write_text, fsync_dir
from behemoth.training.checkpoint_integrity import FORMAT, MANIFEST, checkpoint_problem, write_manifest
from behemoth.training.lora import checkpointed_names
from behemoth.training.rng_state import rng_state, set_rng_state

_STEP_NAME = re.compile(r"step-(\d+)(?:-(\d+))?")
_STALE_PREFIXES = (".tmp-", ".latest.")  # a killed save's build folders, a killed pointer write's temp file


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or incomplete) or is used unverified (written before manifests)."""


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors keyed without torch.compile's `_orig_mod.` prefix; shared tensors cloned.
    A LoRA model's are its adapters only (the frozen base is rebuilt from its source, see lora.py)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    only = checkpointed_names(model)
    for key, tensor in model.state_dict().items():
        key = key.replace("_orig_mod.", "")
        if only is not None and key not in only:
            continue
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
    load_model_weights(target, load_file(str(path)))


def load_model_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Every weight (strict), or for a LoRA model exactly its adapters (the base is already in place)."""
    only = checkpointed_names(model)
    if only is None:
        model.load_state_dict(weights)
        return
    if set(weights) != only:
        odd = sorted(set(weights) ^ only)[0]
        raise RunDirError(f"the saved weights do not fit the model's LoRA adapters (first mismatch: {odd})")
    model.load_state_dict(weights, strict=False)


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
    """Write checkpoint `step` (build in a temp folder, manifest last, rename, point `latest` at it) and
    keep the last N; returns where it went.

    Every rank calls this. Unsharded (single, ddp): rank 0 writes model.safetensors + state.pt (DDP replicas
    are equal). Sharded (the model holds part of the weights: fsdp, pipeline): every rank writes its shards
    into dcp/, then rank 0 adds state.pt and the manifest and renames; the other ranks return once their part
    is on disk (the caller's barrier waits for the rename). Rank 0 first removes what a killed save left
    behind.
    """
    main, sharded = env is None or env.is_main, holds_shard(model)
    root = run_dir / "checkpoints"
    if sharded:
        from behemoth.distributed.dcp import save_sharded

        tmp = root / f".tmp-step-{step:08d}"  # one name for every rank (across nodes: a shared filesystem)
        if main:
            _start_save(run_dir)
            tmp.mkdir()
        barrier(env)
        frozen = checkpointed_names(model) is None  # a LoRA model's shards hold its adapters only
        groups = save_sharded(tmp / "dcp", model, optimizer, env is not None and env.distributed, frozen)
        state = {**state, "param_groups": groups}
    if not main:
        return root / f"step-{step:08d}"
    if not sharded:
        _start_save(run_dir)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        save_weights(model, tmp / "model.safetensors")
        state = {**state, "optimizer": named_optimizer_state(model, optimizer)}
    _write_state(tmp / "state.pt", state)
    write_manifest(tmp, step)
    return _commit(tmp, root, step, keep_last)


def _start_save(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(run_dir)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    with open(path, "wb") as handle:
        torch.save({**state, "rng": rng_state(), "checkpoint_format": FORMAT}, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _commit(tmp: Path, root: Path, step: int, keep_last: int) -> Path:
    """Rename the finished folder in under a name nothing points at, then make `latest` name it: the
    pointer flips atomically from one intact checkpoint to the next. Then prune (a rewritten step's earlier
    folder goes too) and give a rewrite the step's usual name."""
    final = _fresh_name(root, step)
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", final.name)
    _prune(root, final.name, keep_last)
    return _settle(root, final)


def _settle(root: Path, path: Path) -> Path:
    """step-00000420-2 becomes step-00000420 once the earlier folder is gone, and `latest` follows. Between
    the two renames `latest` names no folder; latest_checkpoint then takes the newest intact one up to that
    name: this one, under its usual name."""
    usual = root / f"step-{_step_key(path.name)[0]:08d}"
    if path == usual or usual.exists():
        return path  # a first write, or the earlier folder could not be removed: keep the revision's name
    os.replace(path, usual)
    fsync_dir(root)
    atomic_write_text(root / "latest", usual.name)
    return usual


def _step_key(name: str) -> tuple[int, int] | None:
    """(step, revision) of a checkpoint folder's name: step-00000420 is revision 1, step-00000420-2 is 2."""
    match = _STEP_NAME.fullmatch(name)
    return (int(match[1]), int(match[2] or 1)) if match else None


def _step_dirs(root: Path) -> list[Path]:
    """Checkpoint folders, oldest first (by step, then revision)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _step_key(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: _step_key(p.name))


def _fresh_name(root: Path, step: int) -> Path:
    """step-00000420, or the next revision (step-00000420-2, ...) when that step is already on disk."""
    revisions = [key[1] for p in root.iterdir() if (key := _step_key(p.name)) and key[0] == step]
    base = root / f"step-{step:08d}"
    return base.with_name(f"{base.name}-{max(revisions) + 1}") if revisions else base


def _prune(root: Path, latest: str, keep_last: int) -> None:
    """Keep the folder `latest` names and the newest `keep_last - 1` other steps (one folder each: the newest
    revision); after a resume from an older checkpoint, steps past it count as the newest."""
    chosen: dict[int, Path] = {}
    for path in _step_dirs(root):
        step = _step_key(path.name)[0]
        if step not in chosen or chosen[step].name != latest:
            chosen[step] = path
    others = [chosen[step].name for step in sorted(chosen) if chosen[step].name != latest]
    keep = {latest, *others[max(0, len(others) - (keep_last - 1)) :]}
    for path in _step_dirs(root):
        if path.name not in keep:
            _discard(path)


def _discard(path: Path) -> None:
    """Rename aside first so a kill mid-delete leaves a `.tmp-*` folder (cleaned at the next start), not a
    half-deleted checkpoint; best effort, like any cleanup."""
    aside = path.with_name(f".tmp-discard-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def clean_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete what killed saves left in <run>/checkpoints (`.tmp-*` folders, `.latest.*` files); returns them.

    save_checkpoint and load_checkpoint call it on the main rank, when no save can be under way: a run that
    starts or resumes starts clean.
    """
    root = run_dir / "checkpoints"
    stale = sorted(p for p in root.iterdir() if p.name.startswith(_STALE_PREFIXES)) if root.is_dir() else []
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names if it is intact, else the newest intact one older than it (without a
    usable `latest`: the newest intact one); None if there is none.

    Each checkpoint skipped is reported with warnings.warn (CheckpointWarning), naming the file at fault:
    warnings rather than logging so that callers and tests can catch them, and the CLI shows them on stderr.
    """
    root = run_dir / "checkpoints"
    named = _read_pointer(root)
    limit = _step_key(named) if named else None
    if named and not (root / named).is_dir():
        _warn(f"{root / 'latest'} names {named}, which is not there")
    for path in reversed(_step_dirs(root)):
        if limit is not None and _step_key(path.name) > limit:
            continue  # written but never committed, or from a timeline a resume from an older one abandoned
        problem = checkpoint_problem(path)
        if problem is None:
            if not (path / MANIFEST).is_file():
                _warn(f"checkpoint {path} has no {MANIFEST} (written before checksums): using it unverified")
            return path
        _warn(f"skipping checkpoint {path.name}: {problem}")
    return None


def checkpoint_at_step(run_dir: Path, step: int) -> Path | None:
    """The folder holding checkpoint `step` (step-00000420, or a rewrite's step-00000420-2), None if none
    does: callers that pick a step must not build the name themselves."""
    root = run_dir / "checkpoints"
    found = [p for p in _step_dirs(root) if _step_key(p.name)[0] == step]
    named = [p for p in found if p.name == _read_pointer(root)]
    return (named or found or [None])[-1]


def _read_pointer(root: Path) -> str | None:
    try:
        name = (root / "latest").read_text().strip()
    except OSError:
        return None
    if _step_key(name) is None:
        _warn(f"{root / 'latest'} holds {name[:40]!r}, not a checkpoint name: ignoring it")
        return None
    return name


def _warn(message: str) -> None:
    warnings.warn(message, CheckpointWarning, stacklevel=3)


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv | None = None
) -> dict[str, Any]:
    """Load weights and optimizer state (either kind of checkpoint, any strategy); return the rest of the
    saved state. This process's RNG is restored here too. Every rank calls it; the main rank also removes
    what killed saves left behind (the loop resumes here)."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise RunDirError(f"checkpoint {path} cannot be loaded: {problem}")
    if (env is None or env.is_main) and path.parent.name == "checkpoints":
        clean_stale_temporaries(path.parent.parent)
    state = torch.load(path / "state.pt", weights_only=True)
    state.pop("checkpoint_format", None)
    if (path / "dcp").is_dir():
        from behemoth.distributed.dcp import load_sharded

        distributed, frozen = env is not None and env.distributed, checkpointed_names(model) is None
        load_sharded(path / "dcp", model, optimizer, state.pop("param_groups"), distributed, frozen)
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
    only = checkpointed_names(target)  # a LoRA model's checkpoint holds its adapters only
    names = [name for name in target.state_dict() if only is None or name in only]
    missing = [name for name in names if name not in weights]
    if missing:
        raise RunDirError(f"checkpoint does not fit this model: no weights for {missing[0]}")
    # FSDP: every rank holds the whole state and keeps its shard of it; others load it as it is
    options = StateDictOptions(
        full_state_dict=hasattr(target, "set_requires_gradient_sync"), strict=only is None
    )
    set_model_state_dict(target, {name: weights[name] for name in names}, options=options)
    if all(isinstance(key, int) for key in optimizer_state["state"]):  # written before names were used
        optimizer.load_state_dict(optimizer_state)
    else:
        set_optimizer_state_dict(target, optimizer, optimizer_state, options=options)


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The whole model's weights from a checkpoint of either kind, as CPU tensors keyed by name (checked
    against its manifest first)."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise RunDirError(f"checkpoint {path} cannot be loaded: {problem}")
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
        weights = checkpoint_weights(latest_checkpoint(run_dir))
        only = checkpointed_names(
            model
        )  # LoRA: the adapters (the shards also hold QLoRA's quantized buffers)
        if only is not None:
            weights = {name: tensor for name, tensor in weights.items() if name in only}
        write_safetensors(weights, run_dir / "model.safetensors")
    else:
        save_weights(model, run_dir / "model.safetensors")
