"""`behemoth compress` and `behemoth distill` end to end on a small trained digits run: the artifact, the
table (sizes are the files' bytes, accuracies those of the reloaded files), ONNX parity, config errors."""

import json
import subprocess

import pytest
import torch
from typer.testing import CliRunner

import behemoth
from behemoth.cli import app
from behemoth.compression.measure import accuracy
from behemoth.compression.quantize import QUANT_LAYER_TYPES, int8_layers
from behemoth.config import load_config
from behemoth.data import load_data
from behemoth.errors import ConfigError
from behemoth.pipeline import run_training
from behemoth.pipeline.config import resolve_config
from tests.conftest import behemoth_cmd, subprocess_env

runner = CliRunner()
FAST = ["compress.latency_repeats=2"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("compress")
    cfg = load_config(
        resolve_config("digits"), [f"runs_dir={str(runs)!r}", "train.epochs=5", "model.hidden=[128]"]
    )
    run_training(cfg, progress=False)
    return runs / cfg.name


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def test_recipe_writes_the_artifact_and_a_measured_table(digits_run, tmp_path):
    out = tmp_path / "digits.bhm"
    result = invoke(
        "compress",
        digits_run,
        *FAST,
        "--recipe",
        "prune=0.8,quant=kmeans4,code=huffman,retrain_epochs=2,retrain_lr_scale=0.3",
        "--out",
        out,
        "--no-progress",
    )
    record = json.loads((tmp_path / "compress.json").read_text())
    rows = {row["step"]: row for row in record["rows"]}
    assert list(rows) == ["baseline", "pruned", "quantized", "coded"]
    assert rows["baseline"]["bytes"] == (digits_run / "model.safetensors").stat().st_size
    assert rows["coded"]["bytes"] == out.stat().st_size and rows["coded"]["file"] == str(out)
    assert (
        rows["coded"]["bytes"]
        < rows["quantized"]["bytes"]
        < rows["pruned"]["bytes"]
        < rows["baseline"]["bytes"]
    )
    assert rows["coded"]["compression"] > 8  # a 9.6k-parameter model: the ~0.5 kB header weighs in
    assert rows["pruned"]["nonzeros"] < 0.25 * rows["baseline"]["nonzeros"]
    assert all(row["latency_ms_b256"] > 0 and row["latency_ms_b1"] > 0 for row in rows.values())
    assert rows["coded"]["acc"] > rows["baseline"]["acc"] - 0.06
    cfg = load_config(digits_run / "config.toml")
    test = load_data(cfg.data).test
    assert accuracy(behemoth.load_packed(out), test, cfg_spec(digits_run))["acc"] == rows["coded"]["acc"]
    assert all(info["bits"] == 4 for info in record["layers"].values())
    assert "coded" in result.output and "per layer" in result.output and str(out) in result.output


def cfg_spec(run_dir):
    from behemoth.runs import read_spec

    return read_spec(run_dir)[0]


def test_int8_recipe_with_onnx_export(digits_run, tmp_path):
    out = tmp_path / "int8.bhm"
    invoke(
        "compress",
        digits_run,
        *FAST,
        "--recipe",
        "quant=int8,code=zstd",
        "--out",
        out,
        "--onnx",
        "--no-progress",
    )
    record = json.loads((tmp_path / "compress.json").read_text())
    rows = {row["step"]: row for row in record["rows"]}
    assert rows["coded"]["runtime"] == "int8_static" and rows["coded"]["compression"] > 3
    assert rows["coded"]["acc"] >= rows["baseline"]["acc"] - 0.02
    assert set(int8_layers(behemoth.load_packed(out)).values()) == {"LinearReLU", "Linear"}
    onnx = record["onnx"]
    assert (
        onnx["argmax_agreement"] >= 0.98 and onnx["max_abs_diff"] <= 2.01 * onnx["output_step"]
    )  # rounding only


def test_qat_after_pruning_keeps_the_pruned_weights_at_zero(digits_run, tmp_path):
    out = tmp_path / "qat.bhm"
    invoke(
        "compress",
        digits_run,
        *FAST,
        "--recipe",
        "prune=0.6,scope=layer,schedule=oneshot,retrain_epochs=1,quant=qat,finetune_epochs=1,code=huffman",
        "--out",
        out,
        "--no-progress",
        "--no-latency",
    )
    rows = {r["step"]: r for r in json.loads((tmp_path / "compress.json").read_text())["rows"]}
    assert rows["quantized"]["runtime"] == "int8_static"
    layers = [m for m in behemoth.load_packed(out).modules() if isinstance(m, QUANT_LAYER_TYPES)]
    for layer in layers:  # the masks held through fake-quant training (more zeros may come from rounding)
        q = layer.weight().int_repr()
        assert int((q == 0).sum()) >= round(0.6 * q.numel())
    assert rows["coded"]["acc"] > rows["baseline"]["acc"] - 0.06


def test_structured_recipe_from_a_config_section(digits_run, tmp_path):
    section = tmp_path / "recipe.toml"
    section.write_text('[compress]\nstructured = 0.5\nretrain_epochs = 1\ncode = "none"\n')
    out = tmp_path / "small.bhm"
    invoke("compress", digits_run, *FAST, "--config", section, "--out", out, "--no-progress")
    rows = {r["step"]: r for r in json.loads((tmp_path / "compress.json").read_text())["rows"]}
    assert list(rows) == ["baseline", "structured"]
    assert rows["structured"]["parameters"] < 0.6 * rows["baseline"]["parameters"]
    model = behemoth.load_packed(out)
    assert model.net.fc1.out_features == 64 and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_distill_command_trains_a_student_run(digits_run, tmp_path):
    result = invoke(
        "distill",
        "digits",
        f"runs_dir={str(tmp_path)!r}",
        "name=student",
        "model.hidden=[16]",
        "train.epochs=8",
        "--teacher",
        digits_run,
        "-T",
        "3",
        "--alpha",
        "0.7",
        "--no-progress",
    )
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["temperature"] == 3.0 and summary["alpha"] == 0.7 and summary["teacher"] == str(digits_run)
    assert summary["parameters"] < summary["teacher_parameters"] / 3
    assert summary["test"]["acc"] > 0.85 and "teacher" in result.output
    assert (tmp_path / "student" / "model.safetensors").is_file()


def test_bad_recipe_fails_with_one_line_naming_the_field(digits_run):
    result = subprocess.run(
        behemoth_cmd("compress", str(digits_run), "--recipe", "prune=0.5,frobnicate=1"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == f"behemoth: error: {digits_run}/config.toml: compress.frobnicate = 1: unknown key"
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--recipe", "quant=int4"], "compress.quant = 'int4'"),
        (["--recipe", "prune"], "is not key=value"),
        (["--recipe", "schedule=gradual,prune=0.5,retrain_epochs=0"], "compress.retrain_epochs >= 1"),
    ],
)
def test_bad_values_are_config_errors(digits_run, args, message):
    result = runner.invoke(app, ["compress", str(digits_run), *args])
    assert isinstance(result.exception, ConfigError) and message in str(result.exception)


def test_measure_split_val_scores_every_step_on_the_validation_split(digits_run, tmp_path):
    from behemoth.compression.pipeline import compress_run
    from behemoth.runs import open_run
    from behemoth.training.assembly import load_trained_model

    run_dir, cfg = open_run(
        digits_run, ["compress.prune=0.5", f"compress.output={str(tmp_path / 'm.bhm')!r}"]
    )
    result = compress_run(run_dir, cfg, measure_latency=False, measure_split="val")
    data = load_data(cfg.data)
    baseline = load_trained_model(run_dir, cfg)
    assert result.rows[0]["acc"] == accuracy(baseline, data.val, cfg_spec(digits_run))["acc"]
    assert result.rows[0]["errors"] == round((1 - result.rows[0]["acc"]) * len(data.val))
