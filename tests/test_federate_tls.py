"""The federated deployment's transport, tried as an attacker would (issue #17): TLS is never quietly off
(only on loopback or with --insecure, and --insecure only with --deploy), and a real flower-superlink with
node authentication refuses real flower-supernode processes that trust another CA or hold an unregistered
key. The message-level trust boundary is tests/test_federate_trust.py's."""

import re
import time

import pytest

from behemoth.config import load_config
from behemoth.config.federate import DeployConfig, check_deploy_security
from behemoth.errors import ConfigError
from tests.conftest import REPO, run_behemoth

DIGITS = REPO / "configs/federated-digits.toml"


# ---- TLS: never quietly off, and a deployment that refuses the wrong peers --------------------------------


@pytest.mark.parametrize(
    "host,tls,insecure,refused",
    [
        ("127.0.0.1", False, False, False),
        ("127.0.0.5", False, False, False),
        ("::1", False, False, False),
        ("localhost", False, False, False),
        ("0.0.0.0", False, False, True),  # every interface: the network too
        ("192.0.2.10", False, False, True),
        ("superlink.example.org", False, False, True),
        ("192.0.2.10", False, True, False),  # the user said so
        ("192.0.2.10", True, False, False),
    ],
)
def test_tls_may_be_off_only_on_loopback_or_with_insecure(host, tls, insecure, refused):
    deploy = DeployConfig(host=host, tls=tls, node_auth=tls)
    if not refused:
        check_deploy_security(deploy, insecure)
        return
    with pytest.raises(ConfigError, match=f"federate.deploy.tls = false with host = '{re.escape(host)}'"):
        check_deploy_security(deploy, insecure)


def test_federate_deploy_without_tls_to_a_network_address_fails_before_writing(tmp_path):
    done = run_behemoth(
        "federate",
        "federated-digits",
        "--deploy",
        f"runs_dir={tmp_path}",
        "name=plain",
        "federate.deploy.tls=false",
        "federate.deploy.node_auth=false",
        "federate.deploy.host=192.0.2.10",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "federate.deploy.tls = false with host = '192.0.2.10'" in lines[0] and "--insecure" in lines[0]
    assert not (tmp_path / "plain").exists()


def test_insecure_is_for_deployments_only():
    from behemoth.pipeline.federate import federate

    cfg = load_config(DIGITS, ["federate.local_epochs=1"])
    with pytest.raises(ConfigError, match="--insecure: only with --deploy"):
        federate(cfg, insecure=True)


def test_a_node_with_the_wrong_ca_or_an_unregistered_key_is_refused(tmp_path):
    """A real SuperLink (TLS, node authentication) and three real SuperNodes: one trusting another CA (as a
    node would that was pointed at an impostor), one whose key was never registered, one as it should be.
    Only the last gets in."""
    from behemoth.federated.certs import make_node_keys, make_tls
    from behemoth.federated.deploy import (
        Processes,
        flower_env,
        free_port,
        register_nodes,
        superlink_argv,
        supernode_argv,
        wait_listening,
        write_connection,
    )

    tls, impostor = make_tls(tmp_path / "tls", "127.0.0.1"), make_tls(tmp_path / "impostor", "127.0.0.1")
    keys = make_node_keys(tmp_path / "nodes", 3)
    port = free_port("127.0.0.1")
    address = f"127.0.0.1:{port}"
    write_connection(tmp_path / "home", address, tls)
    (tmp_path / "logs").mkdir()
    processes = Processes(tmp_path / "logs", flower_env(tmp_path / "home"))
    nodes = {
        "good": (tls.ca_cert, keys[0]),
        "wrong-ca": (impostor.ca_cert, keys[1]),
        "unknown": (tls.ca_cert, keys[2]),
    }
    try:
        processes.start("superlink", superlink_argv(DeployConfig(), port, tls))
        wait_listening("127.0.0.1", port, processes, 60)
        register_nodes(
            [keys[0][1], keys[1][1]], processes
        )  # the wrong-CA node's key is registered: only its CA is wrong
        for i, (name, (ca, (private, _))) in enumerate(nodes.items()):
            argv = supernode_argv(address, i, 3, tmp_path / "config.toml", ca)
            processes.start(name, argv + ["--auth-supernode-private-key", str(private), "--max-retries", "1"])
        started = dict(processes.started)
        link_log = tmp_path / "logs" / "superlink.log"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            started["wrong-ca"].poll() is not None
            and started["unknown"].poll() is not None
            and "Activated node_id" in link_log.read_text()
        ):
            time.sleep(0.5)
        alive = {name: started[name].poll() is None for name in nodes}
    finally:
        processes.stop_all()
    logs = {name: (tmp_path / "logs" / f"{name}.log").read_text() for name in [*nodes, "superlink"]}
    assert alive == {"good": True, "wrong-ca": False, "unknown": False}, logs
    assert "CERTIFICATE_VERIFY_FAILED" in logs["wrong-ca"]
    assert "Failed to activate SuperNode" in logs["unknown"]
    assert "No SuperNode found with the given public key" in logs["superlink"]
    assert logs["superlink"].count("Activated node_id") == 1  # the good node, and no other
