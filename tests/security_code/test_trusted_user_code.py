"""The user allows their own code (issue #17): a user factory is refused until allowed, then works from
Python (`behemoth.trust_code`), the CLI (`--trust-code`) and the environment (BEHEMOTH_TRUST_CODE), which the
CLI hands on to the processes it starts; trusting a package never covers a look-alike name, and only module
names can be trusted."""

import json

import pytest

import behemoth
from behemoth.cli.app import allow_user_code
from behemoth.errors import ConfigError
from behemoth.models import trust
from tests.security_code.attacks import assert_refused, cli, snapshot, trusting


def test_a_trusted_package_does_not_cover_a_look_alike(user_run):
    """Trusting `pkg` allows pkg and pkg.sub, never `pkgevil` (prefix without the dot) or a sibling."""
    run, _, package = user_run
    with trusting(package[:-1]):
        with pytest.raises(ConfigError, match="--trust-code"):
            behemoth.evaluate(run)
    with trusting(f"{package}.other"):
        with pytest.raises(ConfigError, match="--trust-code"):
            behemoth.evaluate(run)


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
