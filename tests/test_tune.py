"""Choosing hyperparameters on real digits: search-space validation, the lr range test, Optuna studies
(pruning a hopeless trial, resuming a killed study) and both CLI commands end to end."""

import json
import signal
import sqlite3
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from behemoth.cli import app
from behemoth.config import apply_overrides, config_from_dict, dump_config, load_config
from behemoth.config.loader import read_toml
from behemoth.errors import ConfigError
from behemoth.pipeline.config import resolve_config
from behemoth.training.assembly import prepare
from behemoth.tuning.lr_finder import find_lr
from behemoth.tuning.space import check_values
from behemoth.tuning.study import TrialRunner, open_study, run_trials
from tests.conftest import behemoth_cmd, subprocess_env

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def tune_raw(tmp_path, *overrides: str) -> dict:
    """The digits-tune recipe, small: 3 epochs per trial, runs under tmp_path."""
    raw = read_toml(resolve_config("digits-tune"))
    return apply_overrides(
        raw, [f"runs_dir={str(tmp_path)!r}", "train.epochs=3", "tune.objective='val.acc'", *overrides]
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"train.lr": {"log_uniform": [0, 1]}},
            "tune.space.train.lr = {'log_uniform': [0, 1]}: log_uniform needs [low, high]",
        ),
        (
            {"train.lr": {"uniform": [1, 0.5]}},
            "tune.space.train.lr = {'uniform': [1, 0.5]}: uniform needs [low, high], numbers with low < high",
        ),
        ({"train.lr": {"loguniform": [1e-3, 1]}}, "unknown kind 'loguniform'"),
        (
            {"train.lrr": {"log_uniform": [1e-3, 1]}},
            "tune.space.train.lrr = {'log_uniform': [0.001, 1]}: train has no key 'lrr' (did you mean 'lr'?)",
        ),
        ({"train.early_stop": {"choice": [1]}}, "train.early_stop is a section, not a value"),
        (
            {"data.batch_size": {"int": [8.5, 64]}},
            "tune.space.data.batch_size = {'int': [8.5, 64]}: int needs [low, high], integers",
        ),
        (
            {"train.optimizer": {"choice": []}},
            "tune.space.train.optimizer = {'choice': []}: choice needs a non-empty list",
        ),
        ({"train.lr": {"log_uniform": [1e-3, 1], "uniform": [0, 1]}}, "tune.space.train.lr = "),
        ({"tune.trials": {"int": [1, 5]}}, "cannot tune its own settings"),
    ],
)
def test_bad_space_fails_at_load_naming_the_key(spec, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"tune": {"space": spec}})
    assert message in str(info.value)


def test_values_the_schema_rejects_name_the_key():
    raw = {"data": {"name": "digits"}, "model": {"name": "mlp"}}
    for space, fragment in [
        (
            {"data.batch_size": {"choice": [0, 64]}},
            "tune.space.data.batch_size = {'choice': [0, 64]}: value 0 is not valid",
        ),
        ({"train.momentum": {"uniform": [0.0, 1.0]}}, "tune.space.train.momentum"),
        ({"model.hiden": {"choice": [[64]]}}, "tune.space.model.hiden"),  # the mlp has no such option
    ]:
        cfg = config_from_dict({**raw, "tune": {"space": space}})
        with pytest.raises(ConfigError, match="value .* is not valid") as info:
            check_values(raw, cfg.tune.space)
        assert fragment in str(info.value)


def test_nested_and_quoted_keys_agree_and_survive_a_round_trip(tmp_path):
    dotted = config_from_dict(
        {
            "tune": {
                "space": {
                    "train.lr": {"log_uniform": [1e-4, 1.0]},
                    "model.hidden": {"choice": [[64], [128, 64]]},
                }
            }
        }
    )
    nested = config_from_dict(
        {
            "tune": {
                "space": {
                    "train": {"lr": {"log_uniform": [1e-4, 1.0]}},
                    "model": {"hidden": {"choice": [[64], [128, 64]]}},
                }
            }
        }
    )
    assert dotted.tune.space == nested.tune.space
    path = tmp_path / "c.toml"
    path.write_text(dump_config(dotted))
    assert load_config(path).tune.space == dotted.tune.space
    assert dotted.tune.resolved_direction == "maximize"
    assert config_from_dict({"tune": {"objective": "val.loss"}}).tune.resolved_direction == "minimize"


def test_find_lr_suggests_a_rate_on_the_descent():
    cfg = load_config(resolve_config("digits"))
    data, model = prepare(cfg)
    result = find_lr(model, data, cfg.train, cfg.data.batch_size, start_lr=1e-5, end_lr=10.0, steps=80)
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses) > 30
    assert result.lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(result.lrs, result.lrs[1:]))
    assert min(result.losses) < 0.8 * result.losses[0]  # the sweep found rates that learn
    assert result.suggestion < result.min_loss_lr  # steepest descent comes before the minimum
    assert 1e-4 < result.suggestion < 0.5  # adam on digits: sane rates, not the ends of the sweep
    # Adam at lr 10 blows the loss up: the test stops early instead of running the whole sweep
    assert result.stop_reason.startswith("loss diverged") or len(result.lrs) == 80


def test_lr_find_cli_prints_the_suggestion_and_writes_the_plot(tmp_path):
    out = tmp_path / "lr.png"
    output = invoke(
        "lr-find", "digits", "--steps", "60", "--start", "1e-5", "--out", str(out), "--no-progress"
    ).output
    saved = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 10_000
    assert f"suggested lr {saved['suggestion']:.3g}" in output
    assert len(saved["lrs"]) == len(saved["losses"]) and saved["optimizer"] == "adam"
    bad = runner.invoke(app, ["lr-find", "digits", "--start", "1", "--end", "0.1"])
    assert bad.exit_code == 1 and "need 0 < start < end" in str(bad.exception)


def test_tune_cli_writes_a_study_and_a_best_config_that_trains(tmp_path):
    output = invoke(
        "tune",
        "digits-tune",
        f"runs_dir={str(tmp_path)!r}",
        "train.epochs=3",
        "tune.pruner='none'",
        "tune.objective='val.acc'",
        "--trials",
        "4",
        "--jobs",
        "2",
    ).output
    run_dir = tmp_path / "digits-tune"
    for name in (
        "config.toml",
        "study.sqlite3",
        "trials.csv",
        "best.toml",
        "best.json",
        "history.png",
        "importances.png",
    ):
        assert (run_dir / name).is_file(), name
    study = optuna.load_study(study_name="digits-tune", storage=f"sqlite:///{run_dir / 'study.sqlite3'}")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    best = json.loads((run_dir / "best.json").read_text())
    assert best["best_value"] == study.best_value and f"val.acc = {study.best_value:.4f}" in output
    tuned = load_config(run_dir / "best.toml")
    assert tuned.name == "digits-tune-best" and tuned.tune.space == {}
    assert tuned.train.lr == pytest.approx(study.best_params["train.lr"])
    assert tuned.model.options["hidden"] == json.loads(study.best_params["model.hidden"])
    assert len((run_dir / "trials.csv").read_text().splitlines()) == 5
    trained = invoke("train", str(run_dir / "best.toml"), "train.epochs=1", "--no-progress").output
    assert "test accuracy" in trained and (tmp_path / "digits-tune-best" / "model.safetensors").is_file()


def test_tune_without_a_space_is_a_config_error(tmp_path):
    result = runner.invoke(app, ["tune", "digits", f"runs_dir={str(tmp_path)!r}"])
    assert isinstance(result.exception, ConfigError) and "tune.space is empty" in str(result.exception)
    assert not (tmp_path / "digits").exists()


def test_median_pruner_stops_a_hopeless_trial_after_its_first_epoch(tmp_path):
    raw = tune_raw(tmp_path, "tune.startup_trials=2", "tune.warmup_epochs=0")
    cfg = config_from_dict(raw)
    run_dir = tmp_path / "study"
    run_dir.mkdir()
    study = open_study(cfg, run_dir, resume=False)
    good = {
        "train.lr": 3e-3,
        "train.optimizer": "adam",
        "train.momentum": 0.0,
        "train.weight_decay": 1e-5,
        "data.batch_size": 32,
        "model.hidden": "[64]",
    }
    for params in (
        good,
        good,
        {**good, "train.lr": 1e-4, "train.optimizer": "sgd"},
    ):  # sgd at 1e-4: no learning
        study.enqueue_trial(params)
    run_trials(study, TrialRunner(cfg, raw, log=lambda line: None), trials=3, timeout=None, jobs=1)
    first, _, hopeless = study.trials
    assert first.state == TrialState.COMPLETE and first.value > 0.8
    assert hopeless.state == TrialState.PRUNED
    assert list(hopeless.intermediate_values) == [1]  # reported once, then stopped: 2 of 3 epochs saved
    assert hopeless.intermediate_values[1] < 0.5


@pytest.mark.parametrize("drawn", ["all values", "some values"])
def test_resume_retries_a_trial_left_running_and_completes_the_count(tmp_path, drawn):
    """A trial killed after drawing all its values runs again with them; one killed while drawing is not
    retried: the next new trial takes its place and draws the same values again, all of them."""
    from behemoth.tuning.space import suggest

    raw = tune_raw(tmp_path, "train.epochs=2", "tune.pruner='none'")
    cfg = config_from_dict(raw)
    run_dir = tmp_path / "study"
    run_dir.mkdir()
    study = open_study(cfg, run_dir, resume=False)
    orphan = study.ask()  # as if the process died in the middle of this trial
    if drawn == "all values":
        suggest(orphan, cfg.tune.space)
    else:
        orphan.suggest_float("train.lr", 1e-4, 1.0, log=True)
    resumed = open_study(cfg, run_dir, resume=True)
    assert resumed.trials[0].state == TrialState.FAIL
    retried = drawn == "all values"
    assert len(resumed.trials) == (2 if retried else 1)
    if retried:
        assert resumed.trials[1].state == TrialState.WAITING and resumed.trials[1].user_attrs["retry_of"] == 0
    started = run_trials(
        resumed, TrialRunner(cfg, raw, log=lambda line: None), trials=2, timeout=None, jobs=1
    )
    assert started == 2
    assert resumed.trials[1].params["train.lr"] == pytest.approx(orphan.params["train.lr"])
    if retried:
        assert resumed.trials[1].params == orphan.params
    assert len(resumed.get_trials(states=(TrialState.COMPLETE,))) == 2
    assert run_trials(resumed, TrialRunner(cfg, raw), trials=2, timeout=None, jobs=1) == 0  # nothing left


def _count(db, states=("COMPLETE", "PRUNED")) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            marks = ",".join("?" * len(states))
            return conn.execute(f"select count(*) from trials where state in ({marks})", states).fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked by the writer for a moment
        return 0


def test_a_killed_study_resumes_and_ends_as_the_uninterrupted_one(tmp_path):
    """SIGKILL mid-trial, `tune --resume`: the interrupted trial runs again with its values, later trials get
    the values the uninterrupted study drew (tuning/sampler.py), and every trial's value and best.toml come
    out the same, bit for bit."""

    def start(name: str) -> subprocess.Popen:
        args = [
            "tune",
            "digits-tune",
            f"runs_dir={str(tmp_path)!r}",
            f"name={name}",
            "train.epochs=6",
            "tune.pruner='none'",
            "--trials",
            "5",
            "--no-progress",
        ]
        command = behemoth_cmd(*args)
        return subprocess.Popen(
            command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    straight, proc = start("straight"), start("killed")
    db = tmp_path / "killed" / "study.sqlite3"
    deadline = time.monotonic() + 120
    while _count(db) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()  # killed, not finished on its own
    killed_at = _count(db)
    assert 2 <= killed_at < 5
    assert not (tmp_path / "killed" / "best.toml").exists()
    output = invoke("tune", "--resume", str(tmp_path / "killed"), "--no-progress").output
    assert f"5 trials ({killed_at} done)" in output
    assert _count(db) == 5 and _count(db, ("RUNNING", "WAITING")) == 0
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    def finished(name: str) -> list[tuple[dict, float]]:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / name / 'study.sqlite3'}")
        return [(t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))]

    assert finished("killed") == finished("straight")
    best = [(tmp_path / name / "best.toml").read_text() for name in ("straight", "killed")]
    assert best[0].replace("straight-best", "killed-best") == best[1]


def test_tune_shows_every_trial_while_it_runs(tmp_path):
    """The live table's feed: `watch` gets the study's trials while they run, and at the end all of them,
    each with the worker that ran it."""
    import os

    from rich.console import Console

    from behemoth.cli.tune_cmds import trials_table
    from behemoth.pipeline import tune

    seen = []
    result = tune(
        "digits-tune",
        [f"runs_dir={str(tmp_path)!r}", "train.epochs=2", "tune.pruner='none'"],
        trials=2,
        log=lambda line: None,
        announce=lambda line: None,
        watch=seen.append,
    )
    final = seen[-1]
    assert [r.state for r in final] == ["COMPLETE", "COMPLETE"]
    assert {r.worker.rsplit(":", 1)[1] for r in final} == {str(os.getpid())}
    assert [r.value for r in final] == [t.value for t in result.study.trials]
    console = Console(record=True, width=200)
    console.print(trials_table(final))
    text = console.export_text()
    assert "2 complete" in text and "train.lr=" in text and f":{os.getpid()}" in text


@pytest.mark.parametrize("killed", ["after drawing", "before drawing"])
def test_a_dead_trial_does_not_shift_what_later_trials_draw(killed):
    """The two windows a SIGKILL can hit: after a trial drew its values (retried with them, in its place) and
    before (nothing to retry: the next new trial takes its place). Either way the study goes on drawing what
    the uninterrupted one drew."""
    from behemoth.tuning.sampler import PlaceSeededSampler
    from behemoth.tuning.storage import retry_dead_trial

    def objective(trial):
        return trial.suggest_float("x", 0, 1) + trial.suggest_int("n", 1, 9)

    straight = optuna.create_study(sampler=PlaceSeededSampler(seed=3))
    straight.optimize(objective, n_trials=5)
    study = optuna.create_study(sampler=PlaceSeededSampler(seed=3))
    study.optimize(objective, n_trials=2)
    dead = study.ask()
    if killed == "after drawing":
        objective(dead)
    study.tell(dead, state=TrialState.FAIL)
    retry_dead_trial(study, study.trials[-1])
    study.optimize(objective, n_trials=3)
    complete = [t.params for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete == [t.params for t in straight.trials]
