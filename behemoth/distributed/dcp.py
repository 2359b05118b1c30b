"""Sharded checkpoints with torch.distributed.checkpoint (DCP): every rank writes its own shards of the
model and optimizer state, and a checkpoint loads at any world size and strategy (DCP reshards on read).

State is keyed by parameter name (get_state_dict/set_state_dict), so FSDP shards, pipeline stages and a
plain single-process model all read the same files. Only tensors go into DCP; everything else (param
group hyperparameters, scheduler, position, RNG) is written next to it by rank 0 in a tensor-only
torch.save file. Reading never unpickles arbitrary objects: DCP's `.metadata` file is a pickle, so it is
read with an unpickler that accepts only DCP's own metadata classes, and byte entries (which this module
never writes) would be loaded with torch.load(weights_only=True).
"""

import contextlib
import io
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from behemoth.errors import RunDirError

# The only globals a DCP .metadata pickle may name (checked on torch 2.13).
_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """pickle, restricted to DCP's metadata dataclasses, torch.Size and dtypes (Python docs:
    'Restricting Globals')."""

    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in checkpoint metadata")


def _reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            try:
                with open(Path(self.path) / ".metadata", "rb") as handle:
                    metadata = _MetadataUnpickler(handle).load()
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
                raise RunDirError(f"checkpoint {path}: unreadable metadata ({exc})") from None
            _check_storage_paths(metadata, path)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = _storage_meta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def _check_storage_paths(metadata, path: Path) -> None:
    """Every file the metadata names is a regular file inside the checkpoint directory, checked before any
    is read: the metadata is shared data, and a `relative_path` such as `../x`, `/etc/passwd` or a link
    out would make DCP open (and torch.load) a file elsewhere."""
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        raise RunDirError(f"checkpoint {path}: unreadable metadata (no storage entries)")
    root = Path(path).resolve()
    for index, info in storage.items():
        name = getattr(info, "relative_path", None)
        if _escapes(root, name):
            raise RunDirError(
                f"checkpoint {path}: entry {getattr(index, 'fqn', index)} names file {name!r}, which is not "
                "a file inside the checkpoint directory; refusing to read it"
            )


def _escapes(root: Path, name: object) -> bool:
    """Whether `name` is anything but a plain file name whose target (links followed) is inside `root` and
    a regular file or absent."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        return True
    try:
        target = (root / name).resolve()
        return not target.is_relative_to(root) or (target.exists() and not target.is_file())
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        return True


def _storage_meta():
    from torch.distributed.checkpoint.metadata import StorageMeta

    return StorageMeta()


def _planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class TensorOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(
            self, read_item, value: io.BytesIO
        ) -> None:  # DCP's own would torch.load(weights_only=False)
            raise RunDirError(
                f"checkpoint entry {read_item.dest_index.fqn} is not a tensor: refusing to unpickle it"
            )

    return TensorOnlyPlanner()


@contextlib.contextmanager
def _one_process_on_purpose() -> Iterator[None]:
    with (
        warnings.catch_warnings()
    ):  # DCP warns that it "assumes the intent is to save/load in a single process"
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _load(payload: dict, path: Path, distributed: bool) -> None:
    import torch.distributed.checkpoint as dcp

    _reader(path).read_metadata()  # crafted metadata fails here as one RunDirError (DCP would wrap it)
    with contextlib.nullcontext() if distributed else _one_process_on_purpose():
        dcp.load(payload, storage_reader=_reader(path), planner=_planner(), no_dist=not distributed)


def _tensors_only(state: dict, where: str) -> dict:
    for key, value in state.items():
        if isinstance(value, dict):
            _tensors_only(value, f"{where}.{key}")
        elif not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{where}.{key} is a {type(value).__name__}: sharded checkpoints hold tensors only"
            )
    return state


def _options(frozen: bool):
    """Which weights the checkpoint holds: every one, or (`frozen` False: a LoRA model, whose frozen base
    is rebuilt from its source) the trainable ones only."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=not frozen, strict=frozen)


def save_sharded(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, distributed: bool, frozen: bool = True
) -> list[dict]:
    """Every rank writes its shards of model + optimizer state into `path` (collective when distributed);
    `frozen` False leaves the frozen parameters out.

    Returns the param groups' hyperparameters (lr, betas, ...; the same on every rank) for rank 0 to keep.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options(frozen))
    payload = _tensors_only({"model": model_state, "optim": optim_state["state"]}, "checkpoint")
    with contextlib.nullcontext() if distributed else _one_process_on_purpose():
        dcp.save(payload, storage_writer=dcp.FileSystemWriter(str(path)), no_dist=not distributed)
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def load_sharded(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    param_groups: list[dict],
    distributed: bool,
    frozen: bool = True,
) -> None:
    """Read `path` into this rank's model and optimizer, whatever the world size and strategy that wrote
    it; `frozen` False reads the trainable parameters only (the others stay as built)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    options = _options(frozen)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)  # this rank's layout
    payload = {"model": model_state, "optim": optim_state["state"]}
    try:
        _load(payload, path, distributed)
    except RuntimeError as exc:  # e.g. a parameter the checkpoint does not have
        raise RunDirError(f"checkpoint {path} does not fit this model: {str(exc).splitlines()[0]}") from None
    apply_param_groups(optim_state["param_groups"], param_groups)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=payload["model"],
        optim_state_dict={"state": payload["optim"], "param_groups": optim_state["param_groups"]},
        options=options,
    )


def apply_param_groups(groups: list[dict], saved: list[dict]) -> None:
    """Saved hyperparameters (lr as the schedule left it, ...) onto the groups, matched by name or order."""
    by_name = {group.get("name"): group for group in saved}
    for i, group in enumerate(groups):
        source = by_name.get(group.get("name")) if group.get("name") is not None else None
        source = source or (saved[i] if i < len(saved) else {})
        group.update({k: v for k, v in source.items() if k != "params"})


def read_sharded_weights(path: Path) -> dict[str, torch.Tensor]:
    """The whole model from a sharded checkpoint, as plain CPU tensors keyed by name (no model needed).

    Shapes and dtypes come from the checkpoint's metadata; one process reads every shard.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = _reader(path)
    metadata = reader.read_metadata()
    weights = {
        key[len("model.") :]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata)
    }
    _load({"model": weights}, path, distributed=False)
    return weights
