"""The structure the code promises: imports point one way, no cycles, a torch-free config, and a CLI
whose commands call the public Python API."""

import subprocess
import sys
from pathlib import Path

import behemoth
from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_imports_follow_the_layers_and_make_no_cycle():
    # pyproject.toml [tool.importlinter]: the layering of ../shared/STYLE.md and an acyclic contract; imports
    # inside functions count (grimp reads every import statement)
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_import_linter_catches_an_upward_import(tmp_path):
    # the check can fail: a copy of the package with one upward import (data -> training) breaks the layers
    copy = tmp_path / "repo"
    copy.mkdir(exist_ok=True)
    subprocess.run(["cp", "-r", str(REPO / "behemoth"), str(copy)], check=True)
    subprocess.run(["cp", str(REPO / "pyproject.toml"), str(copy)], check=True)
    bad = copy / "behemoth" / "data" / "upward.py"
    bad.write_text(
        "def late():\n    from behemoth.training import train  # inside a function: still counted\n"
    )
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "behemoth.data is not allowed to import behemoth.training" in result.stdout
    assert "behemoth.data.upward -> behemoth.training" in result.stdout


def test_the_stage_functions_are_the_public_api():
    for name in (
        "train",
        "evaluate",
        "predict",
        "compress",
        "distill",
        "explain",
        "federate",
        "tune",
        "report",
        "generate",
        "export",
        "plan",
        "load_config",
    ):
        assert callable(getattr(behemoth, name)), name
    # `import behemoth` alone loads no torch: the API is imported on first use
    code = "import sys, behemoth; print(any(m.startswith('torch') for m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )
