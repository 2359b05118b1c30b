"""A TPE sampler whose random draws are a function of (seed, the trial's place in the search), so that a study
killed mid-trial and resumed proposes exactly what the uninterrupted study would have.

Optuna's TPESampler holds one random stream for the whole study; a resumed process starts it again from the
seed, so every trial after the kill would get other values. Here each trial gets a TPESampler of its own,
seeded by its place: its number less the trials that died before it (each is marked failed and queued
again with the same values: the retry takes the dead trial's place; tuning/storage.py; a trial killed
before it drew all its values is not retried: the next new trial takes its place and draws them again).
TPE reads the history from the study, which holds the same finished trials either way.
"""

from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from behemoth.tuning.storage import INTERRUPTED, RETRY_OF


class PlaceSeededSampler(BaseSampler):
    def __init__(self, seed: int, **tpe_options: Any) -> None:
        self.seed, self.tpe_options = seed, tpe_options
        self._per_trial: dict[int, TPESampler] = {}

    def _sampler(self, study: optuna.Study, trial: FrozenTrial) -> TPESampler:
        if trial.number not in self._per_trial:
            trials = study.get_trials(deepcopy=False)
            # dead trials: retried ones, and ones killed before they drew a value (nothing to retry)
            dead = {t.user_attrs.get(RETRY_OF) for t in trials} | {
                t.number
                for t in trials
                if t.state == TrialState.FAIL and (not t.params or t.user_attrs.get(INTERRUPTED))
            }
            place = trial.number - sum(1 for number in dead if number is not None and number < trial.number)
            self._per_trial[trial.number] = TPESampler(seed=self.seed * 1_000_003 + place, **self.tpe_options)
        return self._per_trial[trial.number]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._sampler(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler(study, trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._sampler(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler(study, trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: list[float] | None
    ) -> None:
        self._sampler(study, trial).after_trial(study, trial, state, values)
        self._per_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:  # optuna calls it for n_jobs > 1; the streams stay tied to the places
        pass
