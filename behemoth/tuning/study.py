"""Optuna glue: a TPE study stored in SQLite in the run directory, trials that train through the
ordinary engine, a pruning hook on the per-epoch validation, and the results written as files.

runs/<name>/
  config.toml       the base config (with its [tune] section): what `--resume` reopens
  study.sqlite3     the Optuna study: every trial, its params, per-epoch values and state
  trials.csv        one row per trial
  best.toml         the best trial's full config, ready for `behemoth train runs/<name>/best.toml`
  best.json         best value, params and the trial counts
  history.png, importances.png
"""

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from behemoth.config import RunConfig
from behemoth.config.loader import to_toml
from behemoth.config.tune import TuneConfig
from behemoth.errors import BehemothError
from behemoth.files import atomic_write_text
from behemoth.runs import RunDir, write_json
from behemoth.training import BaseHook, train
from behemoth.training.assembly import assemble, load_run_data
from behemoth.tuning.sampler import PlaceSeededSampler
from behemoth.tuning.space import config_with, decode_params, suggest
from behemoth.tuning.storage import (
    INTERRUPTED,
    fail_dead_trials,
    masked,
    open_storage,
    retry_dead_trial,
    storage_url,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # which process ran a trial (several may share a study)


class PruningHook(BaseHook):
    """Reports the objective to the trial after every epoch; raises TrialPruned when the pruner says so.

    The exception leaves the training loop at once (hooks may stop it by raising).
    """

    def __init__(self, trial: optuna.Trial, objective: str) -> None:
        self.trial, self.objective = trial, objective

    def on_epoch_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        if self.objective not in metrics:
            raise BehemothError(f"tune.objective = {self.objective!r}: not measured (no validation split?)")
        value = metrics[self.objective]
        self.trial.report(value, ctx.epoch)  # ctx.epoch: epochs completed, 1 after the first
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {ctx.epoch}: {self.objective} = {value:.4f}")


def make_pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
        )
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(cfg: RunConfig, run_dir: Path, resume: bool) -> optuna.Study:
    """Create the study or join it (a shared database: another worker may have made it), or load it on
    resume. The run directory's own study has one worker: on resume, the trials it left running are dead
    at once; in a shared database, heartbeats tell (tuning/storage.py). Either way a dead trial is marked
    failed and queued again with its values, and the sampler proposes what an uninterrupted study would
    have (tuning/sampler.py)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print our own line per trial
    shared = cfg.tune.storage is not None
    if resume and not shared and not RunDir(run_dir).tune_file("study.sqlite3").is_file():
        raise BehemothError(f"{run_dir} has no study.sqlite3: nothing to resume")
    kwargs = dict(
        storage=open_storage(cfg.tune, run_dir),
        study_name=cfg.name,
        sampler=PlaceSeededSampler(seed=cfg.tune.seed),
        pruner=make_pruner(cfg.tune, cfg.train.epochs),
    )
    if not resume or shared:
        study = optuna.create_study(direction=cfg.tune.resolved_direction, load_if_exists=shared, **kwargs)
        if study.direction.name.lower() != cfg.tune.resolved_direction:
            raise BehemothError(
                f"study {cfg.name!r} in {masked(storage_url(cfg.tune, run_dir))} was made to "
                f"{study.direction.name.lower()}, this config says {cfg.tune.resolved_direction}"
            )
        return study
    study = optuna.load_study(**kwargs)
    storage = study._storage  # optuna's public Study API cannot change a trial's state
    study_id = storage.get_study_id_from_name(cfg.name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if set(trial.params) == set(cfg.tune.space):
            retry_dead_trial(study, trial)
        # else it died while drawing its values: the next new trial takes its place and draws them all
        # again, from the same seed (tuning/sampler.py), as a retry of the values drawn so far could not
    return study


class TrialRunner:
    """The objective: base config + sampled values -> train -> final validation objective.

    Data are loaded once per distinct data config and shared by all trials (read-only tensors).
    Seeding and model building hold a lock: torch's global RNG is one per process, and with
    `--jobs` > 1 trials run in threads; that keeps each trial's initial weights a function of its seed.
    """

    def __init__(self, cfg: RunConfig, raw: dict[str, Any], log: Callable[[str], None] = print) -> None:
        self.cfg, self.raw, self.log = cfg, raw, log
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()

    def data_for(self, cfg: RunConfig):
        # batch sizes do not change what is loaded: keep them out of the cache key
        key = cfg.data.model_dump_json(exclude={"batch_size", "eval_batch_size"})
        with self._lock:
            if key not in self._data:
                self._data[key] = load_run_data(cfg)
            return self._data[key]

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        trial.set_user_attr("worker", WORKER)
        values = suggest(trial, self.cfg.tune.space)
        try:
            cfg = config_with(self.raw, values)
        except BehemothError as exc:  # recorded as a failed trial (run_trials catches it); say why
            trial.set_user_attr("error", str(exc))
            self.log(f"trial {trial.number}: failed: {exc}")
            raise
        data = self.data_for(cfg)
        with self._lock:
            parts = assemble(cfg, data=data)  # the same data, model and feed as `behemoth train` would use
        objective = self.cfg.tune.objective
        shown = " ".join(f"{k}={_short(v)}" for k, v in values.items())
        try:
            result = train(
                parts.model,
                data,
                cfg.train,
                cfg.data.batch_size,
                cfg.data.eval_batch_size,
                run_dir=None,
                hooks=[PruningHook(trial, objective)],
                feed=parts.feed,
            )
        except optuna.TrialPruned as exc:
            self.log(f"trial {trial.number}: pruned at {exc} ({time.perf_counter() - started:.1f}s)  {shown}")
            raise
        if result.diverged:  # a hopeless trial as well: stopped early, no usable value
            self.log(f"trial {trial.number}: pruned, {result.stop_reason}  {shown}")
            raise optuna.TrialPruned(result.stop_reason)
        value = result.last_eval[objective]
        trial.set_user_attr("epochs", result.epochs)
        self.log(
            f"trial {trial.number}: {objective} = {value:.4f} after {result.epochs} epochs "
            f"({time.perf_counter() - started:.1f}s)  {shown}"
        )
        return value


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value).replace(" ", "")


def run_trials(
    study: optuna.Study, runner: TrialRunner, trials: int, timeout: float | None, jobs: int
) -> int:
    """Run until the study holds `trials` finished (complete or pruned) trials, or `timeout` passes; with
    other workers on the same database, their running trials count too, and this worker then waits for
    them (running any trial a dead worker left to retry), so every worker writes the same results.

    Returns how many trials this call ran. A trial whose sampled config is invalid is recorded as
    failed (the message names the key) and the search goes on.
    """
    ended = (*FINISHED, TrialState.FAIL)
    before = len(study.get_trials(deepcopy=False, states=ended))
    remaining = trials - len(study.get_trials(deepcopy=False, states=FINISHED))
    if remaining > 0:
        study.optimize(
            runner,
            n_trials=remaining,
            timeout=timeout,
            n_jobs=jobs,
            catch=(BehemothError,),
            callbacks=[StopAtCount(trials)],
        )
    settle(study, runner)
    return len(study.get_trials(deepcopy=False, states=ended)) - before


class StopAtCount:
    """Stops a worker once the study's finished, running and queued trials reach the count (other
    workers' too), so several workers on one database run `trials` in all, not each."""

    def __init__(self, trials: int) -> None:
        self.trials = trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        live = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
        if len(study.get_trials(deepcopy=False, states=live)) >= self.trials:
            study.stop()


def settle(study: optuna.Study, runner: TrialRunner, poll: float = 1.0) -> None:
    """Wait until no trial runs elsewhere; run the retries of trials whose worker died meanwhile."""
    while True:
        fail_dead_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.optimize(runner, n_trials=1, catch=(BehemothError,))
        elif study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(poll)
        else:
            return


def best_config(study: optuna.Study, cfg: RunConfig, raw: dict[str, Any]) -> RunConfig:
    values = decode_params(study.best_trial.params, cfg.tune.space)
    best = config_with(raw, values)
    return best.model_copy(update={"name": f"{cfg.name}-best"})


def write_results(study: optuna.Study, cfg: RunConfig, raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """trials.csv, best.toml, best.json and the plots; returns what best.json holds."""
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    atomic_write_text(RunDir(run_dir).tune_file("trials.csv"), frame.to_csv(index=False))
    counts = {
        state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    summary: dict[str, Any] = {
        "objective": cfg.tune.objective,
        "direction": cfg.tune.resolved_direction,
        "trials": counts,
    }
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        write_json(RunDir(run_dir).tune_file("best.json"), summary)
        return summary
    best = best_config(study, cfg, raw)
    # the tuned config without [tune]: it is a training config now, runs into runs/<name>-best
    atomic_write_text(
        RunDir(run_dir).tune_file("best.toml"),
        to_toml(best.model_dump(mode="json", exclude_none=True, exclude={"tune"})),
    )
    summary.update(
        best_trial=study.best_trial.number,
        best_value=study.best_value,
        best_params=decode_params(study.best_trial.params, cfg.tune.space),
    )
    from behemoth.tuning.plots import plot_history, plot_importances  # matplotlib only when writing

    summary["importances"] = plot_importances(study, RunDir(run_dir).tune_file("importances.png"))
    plot_history(study, cfg.tune.objective, RunDir(run_dir).tune_file("history.png"))
    write_json(RunDir(run_dir).tune_file("best.json"), summary)
    return summary
