"""Names never import code unless the user says so (issue #17): a .bhm header or a run directory's
config.toml that names "module:function" is refused before anything is imported or called, and the same
user factory works once the user allows it (--trust-code, BEHEMOTH_TRUST_CODE, behemoth.trust_code).

Each attack is crafted here as an attacker would: a real artifact or run written by behemoth, then edited.
A payload that ran would leave a marker file; every refusal checks the marker is absent, the error names
the factory in one line, the exit code is non-zero and the files on disk are byte-identical."""

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import behemoth
from behemoth.cli.app import allow_user_code
from behemoth.errors import ConfigError
from behemoth.models import trust
from tests.conftest import behemoth_cmd, subprocess_env

# ----- helpers -----


@contextmanager
def trusting(*modules: str) -> Iterator[None]:
    """Trust `modules` inside the block only (module-scoped fixtures cannot use monkeypatch)."""
    saved = set(trust._TRUSTED)
    trust.trust_code(*modules)
    try:
        yield
    finally:
        trust._TRUSTED.clear()
        trust._TRUSTED.update(saved)


@pytest.fixture(autouse=True)
def isolated_trust(monkeypatch) -> None:
    """Each test starts from conftest's allow-list, and what it allows (or the CLI exports) is undone."""
    monkeypatch.setattr(trust, "_TRUSTED", set(trust._TRUSTED))
    monkeypatch.delenv(trust.ENV_VAR, raising=False)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` with the SHA-256 of its bytes: equal snapshots, nothing changed."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def write_module(directory: Path, name: str, marker: Path) -> str:
    """A module `name` that writes `marker` when imported (and when its factory is called)."""
    path = directory / f"{name.replace('.', '/')}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    for package in path.relative_to(directory).parents:
        if str(package) != ".":
            (directory / package / "__init__.py").touch()
    path.write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n\n\n"
        "def build(spec=None, **options):\n"
        f"    Path({str(marker)!r}).write_text('called')\n"
        "    raise SystemExit('payload ran')\n"
    )
    return name


def write_user_models(directory: Path, package: str) -> str:
    """A legitimate user package `package.models` whose `build` makes the digits recipe's MLP shape."""
    (directory / package).mkdir(parents=True)
    (directory / package / "__init__.py").write_text("")
    (directory / package / "models.py").write_text(
        "import math\n\nfrom torch import nn\n\n\n"
        "def build(spec, hidden: int = 32) -> nn.Module:\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), hidden), nn.ReLU(),\n"
        "                         nn.Linear(hidden, spec.num_classes))\n"
    )
    return f"{package}.models"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def rewrite_bhm_model(data: bytes, name: str, options: dict) -> bytes:
    """What an attacker does to a real .bhm: new model name/options in the header, and a valid CRC-32."""
    prefix = struct.Struct("<4sII")
    magic, length, _ = prefix.unpack_from(data)
    header = json.loads(zlib.decompress(data[prefix.size : prefix.size + length]))
    header["model"] = {"name": name, "options": options}
    raw = zlib.compress(json.dumps(header).encode(), 9)
    return prefix.pack(magic, len(raw), zlib.crc32(raw)) + raw + data[prefix.size + length :]


def set_run_model(run_dir: Path, model_lines: str) -> None:
    """Replace the [model] section of a run's config.toml (the run as an attacker ships it)."""
    config = run_dir / "config.toml"
    head, _, rest = config.read_text().partition("[model]\n")
    tail = rest[rest.index("\n[") :]
    config.write_text(f"{head}[model]\n{model_lines}\n{tail}")


def cli(*args: str, code_dir: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`behemoth ARGS` in a fresh process, started in `code_dir` with it on PYTHONPATH too: the attacker's
    module is importable, as it would be if shipped next to the run."""
    env = subprocess_env()
    env["PYTHONPATH"] = str(code_dir) + ":" + env["PYTHONPATH"]
    env.update(env_extra or {})
    return subprocess.run(
        behemoth_cmd(*args), capture_output=True, text=True, timeout=300, env=env, cwd=code_dir
    )


def assert_refused(result: subprocess.CompletedProcess, factory: str, module: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"model.name = {factory!r}" in lines[0] and f"--trust-code {module}" in lines[0], lines[0]


@dataclass
class Payloads:
    """Both payloads of a test: `os:system` running `touch shell_marker`, and a module that writes
    `import_marker` when imported."""

    code_dir: Path
    shell_marker: Path
    import_marker: Path
    evil_module: str

    @property
    def shell_options(self) -> dict[str, str]:
        return {"command": f"touch {self.shell_marker}"}

    def untouched(self) -> bool:
        return not self.shell_marker.exists() and not self.import_marker.exists()


@pytest.fixture
def payloads(tmp_path, monkeypatch) -> Payloads:
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    marker = tmp_path / "imported.marker"
    module = write_module(code_dir, unique("evil"), marker)
    monkeypatch.syspath_prepend(str(code_dir))
    return Payloads(code_dir, tmp_path / "shell.marker", marker, module)


# ----- real runs and artifacts, written by behemoth itself -----


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A real (1-epoch) run of the digits recipe: zoo MLP, config.toml, weights, checkpoints."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = behemoth.load_config("digits", ["train.epochs=1", f"runs_dir={str(runs)!r}", "name=d"])
    return Path(behemoth.train(cfg, progress=False)["run"])


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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


def attacked_copy(digits_run: Path, tmp_path: Path, model_lines: str) -> Path:
    run = tmp_path / "shared-run"
    shutil.copytree(digits_run, run)
    set_run_model(run, model_lines)
    return run


# ----- attack 1: a .bhm whose header names code -----


def test_bhm_header_naming_os_system_is_refused_by_load_packed(real_bhm, payloads, tmp_path):
    evil = tmp_path / "evil.bhm"
    evil.write_bytes(rewrite_bhm_model(real_bhm, "os:system", payloads.shell_options))
    before = evil.read_bytes()
    with pytest.raises(ConfigError) as refused:
        behemoth.load_packed(evil)
    message = str(refused.value)
    assert "model.name = 'os:system'" in message and "--trust-code os" in message
    assert "BEHEMOTH_TRUST_CODE=os" in message and 'behemoth.trust_code("os")' in message
    assert payloads.untouched() and evil.read_bytes() == before


def test_bhm_header_naming_a_module_imports_nothing(real_bhm, payloads, tmp_path):
    evil = tmp_path / "evil.bhm"
    evil.write_bytes(rewrite_bhm_model(real_bhm, f"{payloads.evil_module}:build", {}))
    with pytest.raises(ConfigError, match=f"--trust-code {payloads.evil_module}"):
        behemoth.load_packed(evil)
    assert payloads.untouched() and payloads.evil_module not in sys.modules


def test_the_crafted_bhm_is_a_live_attack_without_the_check(real_bhm, payloads, tmp_path):
    """The control: were its module trusted, the crafted header would reach the importer. So the refusals
    above are the trust check's doing, not a side effect of a broken file."""
    evil = tmp_path / "evil.bhm"
    evil.write_bytes(rewrite_bhm_model(real_bhm, f"{payloads.evil_module}:build", {}))
    with trusting(payloads.evil_module), pytest.raises(SystemExit, match="payload ran"):
        behemoth.load_packed(evil)
    assert payloads.import_marker.read_text() == "called"


def test_explain_packed_refuses_a_bhm_naming_os_system(digits_run, real_bhm, payloads, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    evil = tmp_path / "evil.bhm"
    evil.write_bytes(rewrite_bhm_model(real_bhm, "os:system", payloads.shell_options))
    before, bhm_before = snapshot(run), evil.read_bytes()
    result = cli("explain", str(run), "--packed", str(evil), "--no-progress", code_dir=payloads.code_dir)
    assert_refused(result, "os:system", "os")
    assert payloads.untouched() and snapshot(run) == before and evil.read_bytes() == bhm_before


def test_a_trusted_module_does_not_lend_its_imports(real_bhm, payloads, tmp_path):
    """A module the user allowed that happens to `from os import system`: the header names that name."""
    module = unique("helpers")
    (payloads.code_dir / f"{module}.py").write_text("from os import system  # noqa: F401\n")
    evil = tmp_path / "evil.bhm"
    evil.write_bytes(rewrite_bhm_model(real_bhm, f"{module}:system", payloads.shell_options))
    with trusting(module), pytest.raises(ConfigError, match="system is defined in posix") as refused:
        behemoth.load_packed(evil)
    assert f"model.name = '{module}:system'" in str(refused.value) and payloads.untouched()


@pytest.mark.parametrize(
    "name",
    [":build", ".tiny:build", "tests:build", "tests.models_fixtures.tiny:DataSpec", "tests.models_fixtures"],
)
def test_names_outside_the_allow_list_are_refused(name):
    """Around conftest's allowed `tests.models_fixtures`: its parent, relative and empty module names, a
    class it only imports; and a name without a factory is not user code at all (unknown zoo model)."""
    with pytest.raises(ConfigError, match=f"model.name = {name!r}"):
        behemoth.models.validate_model_options(name, {})


# ----- attack 2: a run directory whose config.toml names code -----

RUN_COMMANDS = {
    "evaluate": lambda run, inputs: ["evaluate", run],
    "predict": lambda run, inputs: ["predict", run, inputs],
    "report": lambda run, inputs: ["report", run],
    "compress": lambda run, inputs: ["compress", run, "--no-progress"],
    "explain": lambda run, inputs: ["explain", run, "--no-progress"],
}


@pytest.mark.parametrize("command", list(RUN_COMMANDS))
def test_run_commands_refuse_a_config_naming_os_system(command, digits_run, payloads, tmp_path):
    run = attacked_copy(
        digits_run, tmp_path, f'name = "os:system"\ncommand = "touch {payloads.shell_marker}"'
    )
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.zeros((2, 1, 8, 8), dtype=np.float32))
    before = snapshot(run)
    result = cli(*RUN_COMMANDS[command](str(run), str(inputs)), code_dir=payloads.code_dir)
    assert_refused(result, "os:system", "os")
    assert payloads.untouched() and snapshot(run) == before


@pytest.mark.parametrize("command", ["evaluate", "explain"])
def test_run_commands_refuse_a_config_naming_a_module(command, digits_run, payloads, tmp_path):
    factory = f"{payloads.evil_module}:build"
    run = attacked_copy(digits_run, tmp_path, f'name = "{factory}"')
    before = snapshot(run)
    result = cli(*RUN_COMMANDS[command](str(run), ""), code_dir=payloads.code_dir)
    assert_refused(result, factory, payloads.evil_module)
    assert payloads.untouched() and snapshot(run) == before


def test_python_api_refuses_a_run_naming_code(digits_run, payloads, tmp_path):
    """Every API function that reads a run directory, in-process, with both payloads."""
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.zeros((2, 1, 8, 8), dtype=np.float32))
    calls = {
        "evaluate": lambda run: behemoth.evaluate(run),
        "predict": lambda run: behemoth.predict(run, inputs),
        "report": lambda run: behemoth.report(run),
        "compress": lambda run: behemoth.compress(run, latency=False),
        "explain": lambda run: behemoth.explain(run),
        "export": lambda run: behemoth.export(run),
    }
    shell = f'name = "os:system"\ncommand = "touch {payloads.shell_marker}"'
    for lines, factory in [(shell, "os:system"), (f'name = "{payloads.evil_module}:build"', None)]:
        factory = factory or f"{payloads.evil_module}:build"
        for name, call in calls.items():
            run = attacked_copy(digits_run, tmp_path / f"{name}-{factory.split(':')[0]}", lines)
            before = snapshot(run)
            with pytest.raises(ConfigError, match=f"model.name = {factory!r}"):
                call(run)
            assert payloads.untouched() and snapshot(run) == before, name


def test_a_trusted_package_does_not_cover_a_look_alike(user_run):
    """Trusting `pkg` allows pkg and pkg.sub, never `pkgevil` (prefix without the dot) or a sibling."""
    run, _, package = user_run
    with trusting(package[:-1]):
        with pytest.raises(ConfigError, match="--trust-code"):
            behemoth.evaluate(run)
    with trusting(f"{package}.other"):
        with pytest.raises(ConfigError, match="--trust-code"):
            behemoth.evaluate(run)


# ----- the user allows their own code -----


def test_user_factory_is_refused_until_allowed_then_works_from_python(user_run):
    run, _, package = user_run
    with pytest.raises(ConfigError, match=f"--trust-code {package}.models"):
        behemoth.evaluate(run)
    behemoth.trust_code(package)
    assert 0.0 <= behemoth.evaluate(run)["acc"] <= 1.0


# flag-package and env-list are slow: test_a_trusted_package_does_not_cover_a_look_alike and
# test_the_cli_hands_the_users_choice_to_its_children check package matching and list parsing in-process
@pytest.mark.parametrize(
    "how",
    [
        "flag-module",
        pytest.param("flag-package", marks=pytest.mark.slow),
        "env",
        pytest.param("env-list", marks=pytest.mark.slow),
    ],
)
def test_user_factory_works_from_the_command_line_and_environment(how, user_run):
    run, code_dir, package = user_run
    before = snapshot(run)
    refused = cli("evaluate", str(run), "--out", str(code_dir / "refused.json"), code_dir=code_dir)
    assert_refused(refused, f"{package}.models:build", f"{package}.models")
    assert snapshot(run) == before
    out = code_dir / f"eval-{how}.json"
    args, env = {
        "flag-module": (["--trust-code", f"{package}.models"], {}),
        "flag-package": (["--trust-code", "elsewhere", "--trust-code", package], {}),
        "env": ([], {trust.ENV_VAR: package}),
        "env-list": ([], {trust.ENV_VAR: f"elsewhere, {package}.models"}),
    }[how]
    result = cli(*args, "evaluate", str(run), "--out", str(out), code_dir=code_dir, env_extra=env)
    assert result.returncode == 0, result.stderr
    assert 0.0 <= json.loads(out.read_text())["acc"] <= 1.0


def test_trust_code_takes_module_names_only(tmp_path):
    before = trust.trusted_modules()
    for bad in ["", "os:system", "a..b", "*", "../evil", "pkg.mod "]:
        with pytest.raises(ConfigError, match="expected a module or package name"):
            behemoth.trust_code(bad)
    assert trust.trusted_modules() == before
    result = cli("--trust-code", "os:system", "models", code_dir=tmp_path)
    assert result.returncode == 2 and "expected a module or package name" in result.stderr


def test_the_cli_hands_the_users_choice_to_its_children():
    """Flag and environment together, exported once for the processes behemoth starts (torchrun, Flower)."""
    environ = {trust.ENV_VAR: "pkg.a, pkg.b"}
    allow_user_code(["pkg.c", "pkg.a"], environ)
    assert environ[trust.ENV_VAR] == "pkg.c,pkg.a,pkg.b"
    assert {"pkg.a", "pkg.b", "pkg.c"} <= set(trust.trusted_modules())
    untouched: dict[str, str] = {}
    allow_user_code([], untouched)
    assert untouched == {}
