"""How the code-execution tests (issue #17) attack behemoth: payload modules that leave a marker file when
imported or called, a real .bhm or run directory edited as an attacker would, `behemoth` in a fresh process
with the attacker's module importable, and the one-line refusal every attack must end in."""

import hashlib
import json
import shutil
import struct
import subprocess
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from behemoth.models import trust
from tests.conftest import behemoth_cmd, subprocess_env


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


def attacked_copy(digits_run: Path, tmp_path: Path, model_lines: str) -> Path:
    run = tmp_path / "shared-run"
    shutil.copytree(digits_run, run)
    set_run_model(run, model_lines)
    return run
