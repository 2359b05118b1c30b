"""A .bhm whose header names code (issue #17): `os:system` or an attacker's module in the model name is
refused by `load_packed` and `behemoth explain --packed` before anything is imported or called; the crafted
file is a live attack once its module is trusted; a trusted module does not lend the names it imports; names
around the test allow-list are refused.

Each attack edits a genuine .bhm written by behemoth. A payload that ran would leave a marker file; every
refusal checks the marker is absent, the error names the factory in one line, the exit code is non-zero and
the files on disk are byte-identical."""

import shutil
import sys

import pytest

import behemoth
from behemoth.errors import ConfigError
from tests.security_code.attacks import (
    assert_refused,
    cli,
    rewrite_bhm_model,
    snapshot,
    trusting,
    unique,
)


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
