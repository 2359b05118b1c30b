"""A run directory whose config.toml names code (issue #17): every command and API function that reads a run
(evaluate, predict, report, compress, explain, export) refuses `os:system` or an attacker's module before
importing or calling anything, and leaves the run byte-identical."""

import numpy as np
import pytest

import behemoth
from behemoth.errors import ConfigError
from tests.security_code.attacks import assert_refused, attacked_copy, cli, snapshot

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
