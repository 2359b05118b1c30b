"""What the server and the clients share: the run config (as JSON inside each message, so a SuperNode on
another machine needs no file from the server), the model they build from it, and its weights as a Flower
ArrayRecord (one named array per state_dict entry)."""

import json
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from behemoth.config import RunConfig
from behemoth.spec import DataSpec
from behemoth.training.assembly import build_run_model

CONFIG_KEY = "behemoth-config"  # ConfigRecord entry holding the run config


SHARED_SECTIONS = {
    "name",
    "data",
    "model",
    "train",
    "federate",
}  # what a client needs; other stages keep defaults


def config_to_json(cfg: RunConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json", include=SHARED_SECTIONS), sort_keys=True)


def config_from_json(text: str) -> RunConfig:
    return RunConfig.model_validate(json.loads(text))


def federated_model(cfg: RunConfig, spec: DataSpec) -> nn.Module:
    """The model every party builds: the zoo model, initialised from federate.seed (the server's copy is
    the one that counts; clients overwrite theirs with the global weights)."""
    return build_run_model(cfg, spec, seed=cfg.federate.seed)


def to_arrays(model: nn.Module) -> ArrayRecord:
    """The model's state_dict (parameters and buffers) as an ArrayRecord, keyed like the state_dict."""
    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})


def named_arrays(keys: Iterable[str], ndarrays: Sequence[np.ndarray]) -> ArrayRecord:
    """Flower's legacy Parameters (a plain list, in state_dict order) as an ArrayRecord keyed like the
    state_dict."""
    keys = list(keys)
    if len(keys) != len(ndarrays):
        raise ValueError(f"got {len(ndarrays)} arrays for a state_dict of {len(keys)} entries")
    return ArrayRecord.from_torch_state_dict(
        {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, ndarrays)}
    )


def load_arrays(model: nn.Module, arrays: ArrayRecord | Sequence[np.ndarray]) -> None:
    """Copy the arrays (an ArrayRecord, or a legacy list in state_dict order) into the model; copy_ casts back
    where aggregation made a buffer float (e.g. batch norm's num_batches_tracked averaged)."""
    state = model.state_dict()
    if not isinstance(arrays, ArrayRecord):
        arrays = named_arrays(state, arrays)
    if set(arrays.keys()) != set(state):
        missing = sorted(set(state) ^ set(arrays.keys()))
        raise ValueError(f"the arrays do not match the model's state_dict (first difference: {missing[0]!r})")
    with torch.no_grad():
        for key, array in arrays.items():
            state[key].copy_(torch.from_numpy(array.numpy()))


def client_seed(seed: int, server_round: int, partition: int) -> int:
    """An independent seed per (run seed, round, client): local shuffles, dropout masks, DP noise."""
    return zlib.crc32(f"federate/{seed}/{server_round}/{partition}".encode())
