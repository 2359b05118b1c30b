"""Several `behemoth tune` workers on one PostgreSQL study: a real server on loopback (Debian's postgresql
package; .ci/run installs it), real worker processes, one of them SIGKILLed mid-trial.

Skipped, with the reason, only where the server binaries are not installed.
"""

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO, behemoth_cmd, failure_text, subprocess_env

TRIALS = 6


def server_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server (trust auth on 127.0.0.1) and an empty database; its URL."""
    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL server not installed (Debian package postgresql; .ci/run installs it)")
    # not under pytest's tmp_path: its parents are private to this user, and the server runs as another
    root = Path(tempfile.mkdtemp(prefix="behemoth-postgres-"))
    data, port = root / "data", free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the package's postgres user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        shutil.chown(root, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"

    user = "behemoth"
    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "tune")
        yield f"postgresql://{user}@127.0.0.1:{port}/tune"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def worker(runs: Path, url: str, *extra: str) -> subprocess.Popen:
    args = [
        "tune",
        "digits-tune",
        f"runs_dir={str(runs)!r}",
        f"tune.storage={url!r}",
        "tune.heartbeat=1",  # a dead worker's trial is taken over after 2 s
        "tune.pruner='none'",
        "train.epochs=4",
        "--trials",
        str(TRIALS),
        *extra,
    ]
    return subprocess.Popen(
        behemoth_cmd(*args),
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def by_worker(study: optuna.Study, pid: int, state: TrialState) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(states=(state,))
    return [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{pid}")]


def training_after_a_finished_trial(study: optuna.Study | None, pid: int) -> bool:
    """The worker has finished a trial and is inside its next one with every parameter sampled (a trial is
    RUNNING from before its first suggestion, and a kill before the last one leaves a partial trial)."""
    if study is None or not (done := by_worker(study, pid, TrialState.COMPLETE)):
        return False
    return any(t.params.keys() == done[0].params.keys() for t in by_worker(study, pid, TrialState.RUNNING))


def test_two_workers_split_a_study_and_a_killed_workers_trial_is_retried(postgres_url, tmp_path):
    """Two workers (separate run directories, as on two machines) share the study; worker A is SIGKILLed
    mid-trial. B takes over A's trial after its heartbeat stops, the study ends with TRIALS finished trials,
    each run by one worker, and `tune --resume` on A's directory writes the same best.toml as B."""
    a, b = worker(tmp_path / "a", postgres_url), worker(tmp_path / "b", postgres_url)
    study = None
    deadline = time.monotonic() + 240
    while not training_after_a_finished_trial(study, a.pid):
        assert a.poll() is None, failure_text("".join(a.communicate()))
        assert time.monotonic() < deadline, "worker A never ran a trial after one had finished"
        time.sleep(0.05)
        try:
            study = optuna.load_study(study_name="digits-tune", storage=postgres_url)
        except KeyError:  # not created yet
            study = None
    a.send_signal(signal.SIGKILL)
    a.communicate()
    out, err = b.communicate(timeout=300)
    assert b.returncode == 0, failure_text(out + err)

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    dead = [t for t in trials if t.state == TrialState.FAIL]
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in complete}
    assert workers == {str(a.pid), str(b.pid)}, "both workers ran trials"
    # a race at the very end may start one trial more than asked; never fewer
    assert TRIALS <= len(complete) <= TRIALS + 1 and not study.get_trials(states=(TrialState.RUNNING,))
    assert [t.user_attrs["worker"].endswith(f":{a.pid}") for t in dead] == [True], (
        "A's trial, and only it, died"
    )
    retry = [t for t in complete if t.user_attrs.get("retry_of") == dead[0].number]
    assert (
        len(retry) == 1
        and retry[0].params == dead[0].params
        and retry[0].user_attrs["worker"].endswith(f":{b.pid}")
    )

    resumed = subprocess.run(
        behemoth_cmd("tune", "--resume", str(tmp_path / "a" / "digits-tune"), "--no-progress"),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, failure_text(resumed.stdout + resumed.stderr)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == len(complete), "resume ran nothing more"
    best = [(tmp_path / w / "digits-tune" / "best.toml").read_text() for w in ("a", "b")]
    assert best[0].replace(str(tmp_path / "a"), str(tmp_path / "b")) == best[1]  # each its own runs_dir
    assert (
        json.loads((tmp_path / "b" / "digits-tune" / "best.json").read_text())["best_value"]
        == study.best_value
    )


def test_an_unreachable_server_fails_in_one_line_with_the_password_masked(tmp_path):
    url = f"postgresql://{getpass.getuser()}:s3cret@127.0.0.1:{free_port()}/nowhere"
    done = subprocess.run(
        behemoth_cmd("tune", "digits-tune", f"runs_dir={str(tmp_path)!r}", f"tune.storage={url!r}"),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot open the study database" in lines[0], done.stderr
    assert "s3cret" not in done.stderr and ":***@127.0.0.1" in lines[0]


def test_a_storage_that_is_no_database_url_is_refused_at_load():
    from behemoth.errors import ConfigError
    from behemoth.pipeline.config import load_run_config

    with pytest.raises(
        ConfigError, match=r"tune.storage.*expected a database URL starting with postgresql://"
    ):
        load_run_config("digits-tune", ["tune.storage='postgres://host/db'"])
