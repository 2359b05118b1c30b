"""Federated checkpoints: after every round, the global weights, the strategy's own state and the server's
bookkeeping, so `behemoth federate --resume RUN` continues with the next round after a crash.

Layout: <run>/federated/round-0007/{global.safetensors, strategy.safetensors, state.json} and
<run>/federated/latest. Each round folder is built under a temporary name and renamed into place, and
`latest` is rewritten atomically, so a crash never leaves a half-written checkpoint as the latest one.
Nothing is pickled: tensors go to safetensors, the rest (round, RNG states, privacy ledger) to JSON.
"""

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from behemoth.errors import RunDirError
from behemoth.files import atomic_write_text
from behemoth.runs import RunDir

STRATEGY_STATE = ("m_t", "v_t")  # FedOpt family (FedAdam): first and second moments of the server update


@dataclass
class FederatedState:
    round: int  # rounds completed
    weights: dict[str, torch.Tensor]  # the global model after that round
    strategy: dict[str, dict[str, np.ndarray]]  # attribute -> arrays, e.g. {"m_t": {...}, "v_t": {...}}
    meta: dict[str, Any]  # RNG states, privacy ledger, best accuracy, finished flag


def strategy_state(strategy: Any) -> dict[str, dict[str, np.ndarray]]:
    """The arrays a Flower strategy carries between rounds (empty for stateless ones such as FedAvg)."""
    return {
        name: dict(value)
        for name in STRATEGY_STATE
        if isinstance(value := getattr(strategy, name, None), dict)
    }


def restore_strategy(strategy: Any, state: dict[str, dict[str, np.ndarray]]) -> None:
    for name, arrays in state.items():
        setattr(strategy, name, dict(arrays))


def rng_state() -> dict[str, Any]:
    """Python's RNG (Flower samples clients with random.sample) and NumPy's (Flower's DP noise), as JSON."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_round(run_dir: Path, state: FederatedState, keep_last: int = 2) -> Path:
    """Write round `state.round` atomically and keep the last `keep_last` rounds."""
    root = RunDir(run_dir).federated
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round-{state.round:04d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    save_file({k: v.contiguous() for k, v in state.weights.items()}, str(tmp / "global.safetensors"))
    flat = {
        f"{name}/{key}": np.ascontiguousarray(array)
        for name, arrays in state.strategy.items()
        for key, array in arrays.items()
    }
    save_numpy(flat, str(tmp / "strategy.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"round": state.round, **state.meta}))
    for path in tmp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    for old in sorted(p for p in root.glob("round-*") if p.is_dir())[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(run_dir: Path) -> FederatedState | None:
    """The last completed round's checkpoint, or None when no round finished yet."""
    pointer = RunDir(run_dir).federated / "latest"
    if not pointer.is_file():
        return None
    path = RunDir(run_dir).federated / pointer.read_text().strip()
    files = [path / name for name in ("global.safetensors", "strategy.safetensors", "state.json")]
    if not all(f.is_file() for f in files):
        raise RunDirError(f"federated checkpoint {path} is incomplete")
    meta = json.loads(files[2].read_text())
    strategy: dict[str, dict[str, np.ndarray]] = {}
    for flat_key, array in load_numpy(str(files[1])).items():
        name, key = flat_key.split("/", 1)
        strategy.setdefault(name, {})[key] = array
    return FederatedState(
        round=int(meta.pop("round")), weights=load_file(str(files[0])), strategy=strategy, meta=meta
    )
