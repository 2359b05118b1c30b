"""The behemoth CLI end to end on real data: commands, run directory layout, errors and exit codes."""

import json
import subprocess

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from behemoth.cli import app
from behemoth.config import load_config
from behemoth.pipeline.config import recipe_names
from tests.conftest import run_behemoth

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_behemoth(*args, timeout=timeout)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = invoke("train", "digits", f"runs_dir={str(runs)!r}", "name=d", "train.epochs=8", "--no-progress")
    return runs / "d", result.output


def test_help_explains_every_command():
    top = invoke("--help").output
    for command in ("train", "evaluate", "predict", "demo", "datasets", "models"):
        assert command in top
        assert "Usage" in invoke(command, "--help").output
    assert "train.lr=0.05" in top


def test_train_writes_the_run_directory(digits_run):
    run_dir, output = digits_run
    assert "test accuracy" in output
    for name in ("config.toml", "spec.json", "model.safetensors", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "latest").is_file()
    cfg = load_config(run_dir / "config.toml")
    assert cfg.train.epochs == 8 and cfg.data.name == "digits"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["acc"] > 0.9 and summary["epochs"] == 8
    assert summary["samples_per_second"] > 0 and summary["peak_memory_mb"] > 0


def test_evaluate_prints_and_writes_metrics(digits_run):
    run_dir, _ = digits_run
    output = invoke("evaluate", str(run_dir)).output
    assert "f1_macro" in output and "per class" in output
    metrics = json.loads((run_dir / "eval.json").read_text())
    assert metrics["acc"] > 0.9 and len(metrics["f1_per_class"]) == 10
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["samples"]


def test_predict_on_an_array(digits_run, tmp_path):
    from sklearn.datasets import load_digits

    run_dir, _ = digits_run
    raw = load_digits()
    spec = json.loads((run_dir / "spec.json").read_text())
    shape = tuple(spec["spec"]["input_shape"])
    mean, std = np.array(spec["meta"]["mean"]), np.array(spec["meta"]["std"])
    x = raw.images[:20].reshape((20, *shape)).astype(np.float32)
    x = (x - mean.reshape(1, -1, *[1] * (x.ndim - 2))) / std.reshape(1, -1, *[1] * (x.ndim - 2))
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    invoke(
        "predict", str(run_dir), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.json"), "--top-k", "2"
    )
    rows = json.loads((tmp_path / "p.json").read_text())
    predicted = [int(r["classes"][0]) for r in rows]
    assert len(rows) == 20 and len(rows[0]["classes"]) == 2
    assert np.mean(np.array(predicted) == raw.target[:20]) >= 0.8


def test_datasets_and_models_listings():
    datasets = invoke("datasets").output
    assert "mnist" in datasets and "digits" in datasets and "kjv" in datasets
    models = invoke("models").output
    for name in ("mlp", "lenet5", "lenet_caffe", "cnn", "rnn", "gpt", "vit"):
        assert name in models
    assert "431,080" in models and "1,663,370" in models
    # the optimizer and strategy registries are what the listing and `train --help` show
    from behemoth.config.federate import STRATEGIES
    from behemoth.config.optimizers import OPTIMIZERS

    words = " ".join(models.split())  # rich wraps long lines
    assert f"Optimizers (train.optimizer): {', '.join(OPTIMIZERS)}" in words
    assert f"Federated strategies (federate.strategy): {', '.join(STRATEGIES)}" in words
    assert "adamw8bit" in invoke("train", "--help").output


def test_refuses_to_overwrite_and_keeps_the_old_run(digits_run):
    run_dir, _ = digits_run
    before = (run_dir / "model.safetensors").read_bytes()
    runs_dir = str(run_dir.parent)
    result = run_cli("train", "digits", f"runs_dir={runs_dir}", "name=d")
    assert result.returncode == 1 and "exists: pass --overwrite" in result.stderr
    result = run_cli("train", "digits", f"runs_dir={runs_dir}", "name=d", "train.lr=-1", "--overwrite")
    assert result.returncode == 2 and "train.lr = -1" in result.stderr
    assert (run_dir / "model.safetensors").read_bytes() == before  # bad input: nothing overwritten


@pytest.mark.parametrize(
    "args,code,fragment",
    [
        (["train", "digits", "train.lrr=1"], 2, "train.lrr = 1: unknown key"),
        (["train", "no-such-config.toml"], 2, "config file not found: no-such-config.toml"),
        (["train", "digits", "data.name=imagenet"], 1, "imagenet"),
        (
            ["train", "USER_MODEL_CONFIG", "model.name=tests.models_fixtures.tiny:wrong_classes"],
            1,
            "output shape (2, 11)",
        ),
        (
            ["train", "digits", "model.name=tests.models_fixtures.tiny:build"],
            1,
            "factory rejected its options ['hidden']",
        ),
        (["evaluate", "/nonexistent/run"], 1, "not a behemoth run directory"),
    ],
)
def test_errors_are_one_line_with_exit_code(args, code, fragment, tmp_path):
    config = tmp_path / "user.toml"
    config.write_text('[data]\nname = "digits"\n[model]\nname = "tests.models_fixtures.tiny:build"\n')
    args = [str(config) if a == "USER_MODEL_CONFIG" else a for a in args]
    extra = [f"runs_dir={str(tmp_path)!r}"] if args[0] == "train" else []
    result = run_cli(*args, *extra)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr


def test_user_model_trains(tmp_path):
    config = tmp_path / "user.toml"
    config.write_text(
        'name = "user"\n[data]\nname = "digits"\n[model]\nname = "tests.models_fixtures.tiny:build"\n'
        'hidden = 48\n[train]\nepochs = 6\noptimizer = "adam"\nlr = 0.01\n'
    )
    invoke("train", str(config), f"runs_dir={str(tmp_path)!r}", "--no-progress")
    summary = json.loads((tmp_path / "user" / "summary.json").read_text())
    assert summary["parameters"] == 64 * 48 + 48 + 48 * 10 + 10 and summary["test"]["acc"] > 0.85


def test_debug_shows_the_traceback():
    result = run_cli("--debug", "train", "digits", "train.lrr=1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


# every shipped recipe, including the ones later stages add; the training recipes train (and resume) in
# tests/test_resume_table.py, so here only the ones whose own command is another (tune, federate)
RECIPES = [name for name in recipe_names() if name.startswith(("federated-", "digits-tune"))]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_a_few_steps(recipe, tmp_path):
    from behemoth.data import list_datasets
    from behemoth.pipeline import run_training
    from behemoth.pipeline.config import resolve_config

    cfg = load_config(
        resolve_config(recipe),
        [
            f"runs_dir={str(tmp_path)!r}",
            "train.max_steps=3",
            "train.warmup=0",
            "data.train_limit=256",
            "data.test_limit=64",
        ],
    )
    if not {d.name: d.available for d in list_datasets()}[cfg.data.name]:
        pytest.skip(f"{cfg.data.name} is not installed here")
    summary = run_training(cfg, progress=False)
    assert summary["steps"] == 3 and not summary["diverged"]
    assert 0.0 <= summary["test"]["acc"] <= 1.0 and summary["test"]["loss"] > 0
    images = len(json.loads((tmp_path / cfg.name / "spec.json").read_text())["spec"]["input_shape"]) == 3
    assert (
        tmp_path / cfg.name / "data_preview.png"
    ).is_file() == images  # image runs show what the model sees


def test_divergence_is_reported_and_keeps_the_last_good_checkpoint(tmp_path):
    from behemoth.cli.train_cmd import TrainingDiverged

    result = runner.invoke(
        app,
        [
            "train",
            "digits",
            f"runs_dir={str(tmp_path)!r}",
            "name=diverge",
            "train.lr=1e12",
            "train.optimizer=sgd",
            "train.checkpoint.every_steps=1",
            "--no-progress",
        ],
    )
    assert isinstance(result.exception, TrainingDiverged)
    assert "non-finite loss" in str(result.exception) and "last good checkpoint kept" in str(result.exception)
    latest = (tmp_path / "diverge" / "checkpoints" / "latest").read_text()
    weights = load_file(str(tmp_path / "diverge" / "checkpoints" / latest / "model.safetensors"))
    assert all(t.isfinite().all() for t in weights.values())
