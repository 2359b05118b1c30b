"""Every ```python block of the README runs, so the documented API cannot drift from the code."""

import re
import subprocess
import sys

from tests.conftest import REPO, subprocess_env

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert BLOCKS


def test_every_python_block_runs(tmp_path):
    for number, code in enumerate(BLOCKS):
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=600,
        )
        assert result.returncode == 0, f"README python block {number}:\n{code}\n{result.stderr[-3000:]}"
