"""Real Flower runs on digits: simulation (Flower's engine on Ray) with 30% of clients failing mid-round;
poisoned clients under FedMedian with client-side DP, a server crash and `--resume`; and a deployment on
loopback (flower-superlink + flower-supernode processes, TLS, node authentication).

Each run costs a Ray start (or a dozen process starts), so each covers several paths. `client_cpus=2`:
one Ray actor, so one torch import instead of two on these 2 cores."""

import json
import logging
import os
from pathlib import Path

import pytest

from behemoth.config import load_config
from behemoth.federated.metrics import attach_run_log, read_records
from behemoth.federated.partition import partition
from behemoth.federated.privacy import DPSGDPlan, rdp_epsilon
from behemoth.runs import create_run_dir, run_path, write_config
from tests.conftest import REPO, run_behemoth

DIGITS = REPO / "configs/federated-digits.toml"


def simulate(tmp_path: Path, name: str, overrides: list[str]) -> tuple[Path, list[dict]]:
    """A simulated federation in this process, as `behemoth federate` runs it; its round records."""
    from behemoth.federated.simulate import run_simulated

    cfg = load_config(
        DIGITS, [f"runs_dir={tmp_path}", f"name={name}", "federate.target_accuracy=1.0", *overrides]
    )
    run_dir = create_run_dir(run_path(cfg), overwrite=False)
    write_config(run_dir, cfg)
    attach_run_log(run_dir, stream=None)
    saved, flwr_level = dict(os.environ), logging.getLogger("flwr").level
    try:  # Flower and Ray set PYTHONPATH, their switches and Flower's log level: keep them out of other tests
        run_simulated(cfg, run_dir, resume=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        logging.getLogger("flwr").setLevel(flwr_level)
    return run_dir, [r for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "round"]


def test_a_third_of_the_clients_fail_mid_round_and_the_round_completes(tmp_path):
    run_dir, records = simulate(
        tmp_path,
        "dropout",
        [
            "federate.clients=10",
            "federate.min_clients=1",
            "federate.fraction=1.0",
            "federate.rounds=2",
            "federate.faults.dropout=0.3",
            "federate.faults.dropout_after_steps=1",
            "federate.client_cpus=2",
        ],
    )
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert (
            r["clients.sampled"],
            r["clients.told_to_fail"],
            r["clients.failed"],
            r["clients.replied"],
        ) == (10, 3, 3, 7)
        assert r["aggregated"] and r["bytes.received"] < r["bytes.sent"]
    assert records[2]["test.acc"] > 0.85 > records[0]["test.acc"]
    log = (run_dir / "federate.log").read_text()
    assert "round 1: 3 of 10 sampled clients failed; aggregating the 7 that replied" in log
    assert (
        "round 2: 3 of 10 sampled clients failed" in log
        and "simulated client failure after 1 local steps" in log
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["client_failures"] == 6 and summary["rounds"] == 2


def test_poisoned_clients_under_dp_with_a_crash_and_resume(tmp_path):
    """One run, several paths: 5 clients train with DP-SGD (Opacus); client 0 sends its update scaled by
    -10, client 1 sends NaN; FedMedian aggregates what the guard lets through. The server dies after
    round 2; `behemoth federate --resume` runs round 3 from the checkpoint (global model, RNG, privacy
    ledger): the NaN update is rejected with a log line every round, accuracy holds, and epsilon keeps
    growing exactly as Opacus' RDP accountant counts the clients' steps."""
    from behemoth.federated.metrics import SimulatedServerCrash

    with pytest.raises(SimulatedServerCrash, match="simulated server crash after round 2"):
        simulate(
            tmp_path,
            "robust",
            [
                "federate.clients=5",
                "federate.min_clients=5",
                "federate.rounds=3",
                "federate.strategy=fedmedian",
                "federate.dp.mode=client",
                "federate.dp.noise_multiplier=0.8",
                "federate.dp.clip_norm=1.0",
                "federate.faults.scaled_clients=[0]",
                "federate.faults.poison_scale=-10.0",
                "federate.faults.nan_clients=[1]",
                "federate.faults.crash_after_round=2",
                "federate.client_cpus=2",
            ],
        )
    run_dir = tmp_path / "robust"
    assert (run_dir / "federated" / "latest").read_text() == "round-0002"
    resumed = run_behemoth("federate", "--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = (run_dir / "federate.log").read_text()
    assert "resuming after round 2 of 3" in log
    records = [r for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "round"]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for r in (1, 2, 3):
        assert f"round {r}: rejected update from partition 1: non-finite values in" in log
    assert [r["clients.rejected"] for r in records[1:]] == [1, 1, 1]
    # a mean with the scaled client would be near chance (0.1); DP noise now comes from os.urandom, not the
    # run's seed, so accuracy varies from run to run (about 0.72-0.82 over repeated runs)
    assert records[-1]["test.acc"] > 0.6, records[-1]

    cfg = load_config(run_dir / "config.toml")
    plans = [DPSGDPlan.for_partition(len(p), 16) for p in partition(_digits_train_labels(cfg), cfg.federate)]
    for r in records[1:]:  # every client (the rejected one too) released an update every round
        expected = max(
            rdp_epsilon([(0.8, p.sample_rate, r["round"] * 2 * p.steps_per_epoch)], 1e-5) for p in plans
        )
        assert r["epsilon"] == pytest.approx(expected, rel=1e-9) and r["delta"] == 1e-5
    assert records[1]["epsilon"] < records[2]["epsilon"] < records[3]["epsilon"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["rounds"] == 3
        and summary["epsilon"] == records[3]["epsilon"]
        and summary["rejected_updates"] == 3
    )
    assert "(epsilon, delta)" in resumed.stdout


def _digits_train_labels(cfg):
    from behemoth.data import load_data

    return load_data(cfg.data).train.y


def test_deployment_on_loopback_with_tls_and_node_auth(tmp_path):
    done = run_behemoth(
        "federate",
        "federated-digits",
        "--deploy",
        f"runs_dir={tmp_path}",
        "name=deployed",
        "federate.clients=2",
        "federate.min_clients=2",
        "federate.rounds=1",
        "federate.strategy=fedprox",
        "federate.proximal_mu=0.1",
        "federate.target_accuracy=1.0",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "round 1/1: test acc" in done.stdout  # our ServerApp's lines, streamed back through `flwr run`
    run_dir = tmp_path / "deployed"
    records = [r for r in read_records(run_dir / "metrics.jsonl") if r["kind"] == "round"]
    assert [r["round"] for r in records] == [0, 1]
    assert records[-1]["test.acc"] > 0.9 and all(r["clients.replied"] == 2 for r in records[1:])
    logs = run_dir / "deploy"
    superlink = (logs / "superlink.log").read_text()
    assert "https://127.0.0.1" in superlink  # TLS with the generated certificate
    assert superlink.count("RegisterNode] Created node_id") == 2  # both SuperNodes' keys registered
    for i in (0, 1):
        assert "Sent successfully" in (logs / f"supernode-{i}.log").read_text()
    assert not _flower_processes_left(), "processes of the deployment outlived it"


def _flower_processes_left() -> list[str]:
    """Command lines of live processes that use a deployment's temporary credentials folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "behemoth-flower-" in cmdline:
                found.append(cmdline)
    return found
