"""Shared fixtures: small real data (scikit-learn digits) and tiny configs that train in seconds."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from behemoth.config import TrainConfig
from behemoth.data.bundle import DataBundle, TensorSplit
from behemoth.models.trust import ENV_VAR as TRUST_ENV_VAR
from behemoth.models.trust import trust_code
from behemoth.spec import DataSpec

REPO = Path(__file__).resolve().parents[1]
# The only user code the tests let model names import: the factories in tests/models_fixtures, and the two
# names test_config.py uses to show what an allowed but broken name reports (a missing module, no factory).
USER_MODELS = ("tests.models_fixtures", "tests.conftest", "nosuchpkg")

trust_code(*USER_MODELS)  # in-process: build_model("tests.models_fixtures.tiny:build", ...) and the CliRunner


@pytest.fixture(scope="session")
def digits_bundle() -> DataBundle:
    """sklearn's 8x8 digits as flat features: 1200 train / 297 val / 300 test, standardised."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.data, dtype=torch.float32)
    y = torch.tensor(raw.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    mean, std = x[:1200].mean(0), x[:1200].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return DataBundle(
        name="digits",
        spec=DataSpec("classification", (64,), 10),
        train=TensorSplit(x[:1200], y[:1200]),
        val=TensorSplit(x[1200:1497], y[1200:1497]),
        test=TensorSplit(x[1497:], y[1497:]),
        class_names=[str(i) for i in range(10)],
    )


def mlp(inputs: int = 64, hidden: int = 32, classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
    )


@pytest.fixture(scope="module")
def trained_mlp(digits_bundle) -> torch.nn.Module:
    """A 64-unit MLP trained 6 epochs on digits (the compression tests' subject)."""
    from behemoth.training import train

    model = mlp(hidden=64)
    train(model, digits_bundle, quick_train_config(epochs=6), batch_size=32)
    return model.eval()


def clone(model: torch.nn.Module) -> torch.nn.Module:
    copy = mlp(hidden=model[0].out_features)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def quick_train_config(**overrides) -> TrainConfig:
    base = dict(epochs=2, optimizer="sgd", lr=0.1, momentum=0.9, log_every=10)
    base.update(overrides)
    return TrainConfig(**base)


def behemoth_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "behemoth", *args]


def run_behemoth(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m behemoth ARGS` in a subprocess with the test environment, its output captured as text."""
    return subprocess.run(
        behemoth_cmd(*args), capture_output=True, text=True, env=subprocess_env(), cwd=cwd, timeout=timeout
    )


def failure_text(stderr: str, tail: int = 3000) -> str:
    """What a failed subprocess said: its error-looking lines (a rank's first exception is often far above
    torchrun's closing summary), then the tail."""
    marks = ("Error", "error:", "Exception", "terminate called", "what():", "Traceback")
    errors = [line for line in stderr.splitlines() if any(m in line for m in marks)][:40]
    return "\n".join(errors) + "\n...\n" + stderr[-tail:]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env[TRUST_ENV_VAR] = ",".join(USER_MODELS)  # CLI subprocesses allow the test factories, nothing else
    return env


@pytest.fixture(scope="session")
def tiny_lm_run(tmp_path_factory):
    """A 2 x 64 GPT trained 8 steps on KJV bytes (block 32): the subject of the KV-cache, weight-only and
    perplexity tests. Returns (run directory, its config)."""
    from behemoth.config import load_config
    from behemoth.pipeline import run_training
    from behemoth.pipeline.config import resolve_config

    runs = tmp_path_factory.mktemp("lm")
    cfg = load_config(
        resolve_config("gpt-text"),
        [
            f"runs_dir={str(runs)!r}",
            "name=tiny",
            "data.block_size=32",
            "data.batch_size=16",
            "data.val_fraction=0.001",
            "data.test_limit=32",
            "model.n_layer=2",
            "model.n_head=2",
            "model.n_embd=64",
            "model.block_size=32",
            "train.max_steps=8",
            "train.warmup=0",
            "train.eval_every_steps=8",
            "train.lr=3e-3",
        ],
    )
    run_training(cfg, progress=False)
    return runs / "tiny", cfg


@pytest.fixture(scope="module", autouse=True)
def torch_threads_restored():
    """A run with train.threads = 1 leaves torch at one thread: each module starts where the last began."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """Tiny models gain nothing from a second thread, and on a busy shared machine each op's thread barrier
    waits for a descheduled worker (a 0.2 s test took 13 s at 2 threads): run them on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
