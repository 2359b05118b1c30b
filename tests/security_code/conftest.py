"""Fixtures of the code-execution tests: each test's own trust list and payloads, and real runs and
artifacts written by behemoth itself (built once for the package's three files)."""

import sys
from pathlib import Path

import pytest

import behemoth
from behemoth.models import trust
from tests.security_code.attacks import Payloads, trusting, unique, write_module, write_user_models


@pytest.fixture(autouse=True)
def isolated_trust(monkeypatch) -> None:
    """Each test starts from conftest's allow-list, and what it allows (or the CLI exports) is undone."""
    monkeypatch.setattr(trust, "_TRUSTED", set(trust._TRUSTED))
    monkeypatch.delenv(trust.ENV_VAR, raising=False)


@pytest.fixture
def payloads(tmp_path, monkeypatch) -> Payloads:
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    marker = tmp_path / "imported.marker"
    module = write_module(code_dir, unique("evil"), marker)
    monkeypatch.syspath_prepend(str(code_dir))
    return Payloads(code_dir, tmp_path / "shell.marker", marker, module)


@pytest.fixture(scope="package")
def digits_run(tmp_path_factory) -> Path:
    """A real (1-epoch) run of the digits recipe: zoo MLP, config.toml, weights, checkpoints."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = behemoth.load_config("digits", ["train.epochs=1", f"runs_dir={str(runs)!r}", "name=d"])
    return Path(behemoth.train(cfg, progress=False)["run"])


@pytest.fixture(scope="package")
def real_bhm(digits_run, tmp_path_factory) -> bytes:
    """The bytes of a genuine .bhm of the digits run, written by behemoth's own writer."""
    from behemoth.compression.pack import save_packed
    from behemoth.compression.rebuild import shapes_of, to_packed
    from behemoth.runs import open_run, read_spec
    from behemoth.training.assembly import load_trained_model

    run_dir, cfg = open_run(digits_run)
    model = load_trained_model(run_dir, cfg)
    packed = to_packed(
        model, cfg.model.name, cfg.model.options, read_spec(run_dir)[0], shapes=shapes_of(model)
    )
    path = tmp_path_factory.mktemp("bhm") / "model.bhm"
    save_packed(path, packed)
    return path.read_bytes()


@pytest.fixture(scope="package")
def user_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """A real run of a legitimate user factory (trained while trusted): (run dir, code dir, package)."""
    code_dir = tmp_path_factory.mktemp("usercode")
    package = unique("mymodels")
    factory_module = write_user_models(code_dir, package)
    runs = tmp_path_factory.mktemp("userruns")
    sys.path.insert(0, str(code_dir))
    with trusting(package):
        cfg = behemoth.load_config(
            "digits",
            [
                "train.epochs=1",
                f"runs_dir={str(runs)!r}",
                "name=u",
                f"model.name={factory_module}:build",
                "model.hidden=24",
            ],
        )
        run = Path(behemoth.train(cfg, progress=False)["run"])
    yield run, code_dir, package
    sys.path.remove(str(code_dir))
