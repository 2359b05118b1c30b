"""What the server and the clients exchange: the model's weights as a Flower ArrayRecord (one named array
per state_dict entry; with federate.adapters_only, per trainable LoRA entry only), the model every party
builds from its own config, and the checks a client runs on the arrays it receives. The run config itself
never travels: a client reads its own (client_app.py), and a server may set only RoundSettings
(behemoth.config.federate)."""

import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from behemoth.config import RunConfig
from behemoth.config.federate import RefusedMessage
from behemoth.errors import ConfigError
from behemoth.spec import DataSpec
from behemoth.training.assembly import build_run_model
from behemoth.training.lora import checkpointed_names


def federated_model(cfg: RunConfig, spec: DataSpec) -> nn.Module:
    """The model every party builds: the zoo model, initialised from federate.seed (the server's copy is
    the one that counts; clients overwrite theirs with the global weights)."""
    return build_run_model(cfg, spec, seed=cfg.federate.seed)


def exchanged_state(model: nn.Module, adapters_only: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict entries that travel, in state_dict order (a legacy list's order): all of them, or with
    federate.adapters_only the trainable ones (LoRA adapters and modules_to_save, as a LoRA checkpoint holds
    them), whose tensors share storage with the model's, so copying into them updates the model. The frozen
    base never travels: every party built the same one from its own model.path."""
    state = model.state_dict()
    if not adapters_only:
        return state
    names = checkpointed_names(model)
    if names is None:
        raise ConfigError("federate.adapters_only = true: the model has no LoRA adapters ([train.lora])")
    return {key: value for key, value in state.items() if key.replace("_orig_mod.", "") in names}


NPY_HEADER = 128  # bytes of NumPy's .npy header in each Flower Array (format 1.0, padded to a multiple of 64)


def state_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """What ArrayRecord.count_bytes counts for `state` (each array's data and .npy header, and its key),
    without serializing it: a 7B model's full weights are priced without a copy (or on the meta device)."""
    return sum(t.numel() * t.element_size() + NPY_HEADER + len(key) for key, t in state.items())


def to_arrays(model: nn.Module, adapters_only: bool = False) -> ArrayRecord:
    """The exchanged state (exchanged_state) as an ArrayRecord, keyed like the state_dict."""
    state = exchanged_state(model, adapters_only)
    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu() for k, v in state.items()})


def named_arrays(keys: Iterable[str], ndarrays: Sequence[np.ndarray]) -> ArrayRecord:
    """Flower's legacy Parameters (a plain list, in state_dict order) as an ArrayRecord keyed like the
    state_dict."""
    keys = list(keys)
    if len(keys) != len(ndarrays):
        raise ValueError(f"got {len(ndarrays)} arrays for a state_dict of {len(keys)} entries")
    return ArrayRecord.from_torch_state_dict(
        {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, ndarrays)}
    )


def load_arrays(
    model: nn.Module, arrays: ArrayRecord | Sequence[np.ndarray], adapters_only: bool = False
) -> None:
    """Copy the arrays (an ArrayRecord, or a legacy list in state_dict order) into the model's exchanged
    state; copy_ casts back where aggregation made a buffer float (batch norm's num_batches_tracked)."""
    state = exchanged_state(model, adapters_only)
    if not isinstance(arrays, ArrayRecord):
        arrays = named_arrays(state, arrays)
    if set(arrays.keys()) != set(state):
        missing = sorted(set(state) ^ set(arrays.keys()))
        raise ValueError(f"the arrays do not match the model's state_dict (first difference: {missing[0]!r})")
    _copy_into(state, {key: array.numpy() for key, array in arrays.items()})


def load_checked(
    model: nn.Module, arrays: ArrayRecord | Sequence[np.ndarray], adapters_only: bool = False
) -> None:
    """A client's load_arrays: the arrays go into its model only after `check_arrays` accepted them."""
    state = exchanged_state(model, adapters_only)
    _copy_into(state, check_arrays(state, arrays))


def _copy_into(state: Mapping[str, torch.Tensor], named: Mapping[str, np.ndarray]) -> None:
    with torch.no_grad():
        for key, values in named.items():
            state[key].copy_(torch.from_numpy(np.require(values, requirements=["C", "W"])))


def check_arrays(
    state: Mapping[str, torch.Tensor], arrays: ArrayRecord | Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """The received arrays as NumPy, once each fits the client's own model: the same names (or, as a legacy
    list, the same count), each entry's shape, a dtype of the right kind, every value finite. Whatever a
    server (or anyone between) sends, the model never takes weights it was not built for, nor NaN; the
    first problem is a RefusedMessage naming the entry."""
    named = _received(state, arrays)
    for key, target in state.items():
        problem = _array_problem(target, named[key])
        if problem:
            raise RefusedMessage(f"received array {key!r} {problem}")
    return named


def _received(
    state: Mapping[str, torch.Tensor], arrays: ArrayRecord | Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """Name -> ndarray, once the names (or the count of a legacy list) match the state_dict."""
    if not isinstance(arrays, ArrayRecord):
        if len(arrays) != len(state):
            raise RefusedMessage(f"received {len(arrays)} arrays for a model of {len(state)} entries")
        return {key: np.asarray(a) for key, a in zip(state, arrays)}
    extra, missing = sorted(set(arrays.keys()) - set(state)), sorted(set(state) - set(arrays.keys()))
    if extra or missing:
        what = f"an array {extra[0]!r} the model does not have" if extra else f"no array {missing[0]!r}"
        raise RefusedMessage(f"received {what}")
    named = {}
    for key, array in arrays.items():
        try:
            named[key] = array.numpy()  # NumPy's format without pickles (Flower: allow_pickle=False)
        except (TypeError, ValueError) as error:
            raise RefusedMessage(f"received array {key!r} is not a NumPy array ({error})") from None
    return named


def _array_problem(target: torch.Tensor, values: np.ndarray) -> str | None:
    """Why `values` cannot replace `target`, or None. Floats may come at another precision (an average in
    float64); an integer buffer may come back as a float (FedAvg averages batch norm's counters)."""
    if tuple(values.shape) != tuple(target.shape):
        return f"has shape {tuple(values.shape)}, the model's is {tuple(target.shape)}"
    kinds = "f" if target.is_floating_point() else "fiub"
    if values.dtype.kind not in kinds:
        return f"has dtype {values.dtype}, the model's is {target.dtype}"
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        return "holds NaN or inf"
    return None


def client_seed(seed: int, server_round: int, partition: int) -> int:
    """An independent seed per (run seed, round, client) for runs without DP: local shuffles, dropout masks.
    Everyone who knows the run's seed can compute it, so DP-SGD never uses it (local.py)."""
    return zlib.crc32(f"federate/{seed}/{server_round}/{partition}".encode())
