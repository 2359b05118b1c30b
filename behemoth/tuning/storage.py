"""Where a study lives: the run directory's study.sqlite3, or a database URL (PostgreSQL) shared by several
`behemoth tune` workers on one machine or many.

Optuna's RDBStorage does the sharing: a trial is handed to one worker (row locks), every worker's pruner sees
every reported value, and heartbeats find a worker that died: its running trial is marked failed when no
heartbeat came for `grace` seconds, and queued again with the same values (`retry_dead_trial`).
"""

import random
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from behemoth.config.tune import TuneConfig
from behemoth.errors import BehemothError
from behemoth.runs import RunDir

RETRY_OF = "retry_of"  # user attribute of a trial queued again in place of one a dead worker left running
INTERRUPTED = "interrupted"  # user attribute of a trial a killed process left running (set on resume)


def storage_url(tune: TuneConfig, run_dir: Path) -> str:
    return tune.storage or f"sqlite:///{RunDir(run_dir).tune_file('study.sqlite3').resolve()}"


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


def retry_dead_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker died (killed, or its machine lost) runs again, with the same values."""
    if trial.params and not any(t.user_attrs.get(RETRY_OF) == trial.number for t in study.trials):
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})


def open_storage(tune: TuneConfig, run_dir: Path) -> optuna.storages.RDBStorage:
    """The study's storage, with heartbeats; one line naming the URL (password masked) when it cannot be
    reached or the URL is malformed."""
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    url = storage_url(tune, run_dir)
    connect = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in optuna: we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"connect_args": connect, "pool_pre_ping": True},
                    heartbeat_interval=tune.heartbeat,
                    grace_period=2 * tune.heartbeat,
                    heartbeat_stale_trial_callback=retry_dead_trial,
                )
        except IntegrityError:  # workers started together both created the tables: the other one won
            time.sleep(0.5 + random.random())
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise BehemothError(
                f"tune.storage = {masked(url)!r}: cannot open the study database ({reason})"
            ) from None
    raise BehemothError(
        f"tune.storage = {masked(url)!r}: cannot create the study tables (other workers raced)"
    )


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark failed the running trials whose worker stopped sending heartbeats (and queue them again)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
