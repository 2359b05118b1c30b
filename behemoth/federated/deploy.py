"""`behemoth federate --deploy`: a real Flower deployment on this machine, then shut down.

One `flower-superlink` (TLS with a CA generated for the run, SuperNode authentication), one
`flower-supernode` per client (its `partition-id`, and its own config as `behemoth-config`, in its node
config: client_app.py reads the client's model, data and privacy from there, never from the server), and
`flwr run` submitting the Flower app whose ServerApp/ClientApp are behemoth.federated.server_app:app /
client_app:app (secagg_client:app with federate.secagg): the same code the simulation runs. Every
process we start (and anything it spawned) is stopped on the way out, error or not.
Logs stay in <run>/deploy/; keys and certificates live in a temporary folder deleted at the end.
`federate.deploy.tls = false` runs only on loopback, or with `insecure` (--insecure).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from behemoth.config import RunConfig
from behemoth.config.federate import DeployConfig, check_deploy_security
from behemoth.errors import BehemothError
from behemoth.federated.certs import TLSFiles, make_node_keys, make_tls
from behemoth.federated.metrics import LOG_PREFIX
from behemoth.runs import RunDir

CONNECTION = "behemoth"  # the SuperLink connection's name in the temporary $FLWR_HOME/config.toml

APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "behemoth-federate"
version = "1.0.0"
description = "behemoth's federated ServerApp and ClientApp (the code is the installed behemoth package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "behemoth"

[tool.flwr.app.components]
serverapp = "behemoth.federated.server_app:app"
clientapp = "{clientapp}"

[tool.flwr.app.config]
run-dir = ""
resume = false
"""
CLIENT_APPS = {False: "behemoth.federated.client_app:app", True: "behemoth.federated.secagg_client:app"}


def app_pyproject(cfg: RunConfig) -> str:
    """The app's pyproject.toml: SecAgg+ needs its own ClientApp (Flower's mod on a legacy client); the
    ServerApp reads federate.secagg from the run's config and picks its workflow itself."""
    return APP_PYPROJECT.replace("{clientapp}", CLIENT_APPS[cfg.federate.secagg])


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (Flower detaches its SuperExec and app processes into new sessions,
    so a process group would miss them); read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Processes:
    """The processes of one deployment; `stop_all` ends them and their descendants (TERM, then KILL)."""

    log_dir: Path
    env: dict[str, str]
    started: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()  # the child holds its own copy
        self.started.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                raise BehemothError(
                    f"{name} exited with code {proc.returncode}; see {self.log_dir / (name + '.log')}"
                )

    def stop_all(self, grace: float = 5.0) -> None:
        pids = []
        for _, proc in reversed(self.started):
            pids += [proc.pid] + descendants(proc.pid) if proc.poll() is None else descendants(proc.pid)
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, proc in self.started:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        for _, proc in self.started:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its parent reaps it


def wait_listening(host: str, port: int, processes: Processes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.check_alive()
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise BehemothError(
        f"the SuperLink did not listen on {host}:{port} within {timeout:g}s "
        f"(federate.deploy.startup_timeout); see {processes.log_dir / 'superlink.log'}"
    )


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: its home, no telemetry, and this Python's bin folder on PATH
    (the SuperLink starts `flower-superexec`, `flwr-serverapp`... by name)."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", PATH=bin_dir + os.pathsep + env.get("PATH", "")
    )
    return env


def run_deployed(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool,
    show: Callable[[str], None],
    verbose: bool = False,
    echo: TextIO | None = None,
    insecure: bool = False,
) -> None:
    """Start the SuperLink and cfg.federate.clients SuperNodes, run the app to the end, stop everything.

    `show` gets our ServerApp's log lines as they stream; with `verbose`, Flower's lines too (to `echo`).
    `insecure` allows federate.deploy.tls = false on an address that is not loopback.
    """
    check_deploy_security(cfg.federate.deploy, insecure)
    run_dir = run_dir.resolve()
    log_dir = RunDir(run_dir).deploy_logs
    log_dir.mkdir(exist_ok=True)
    RunDir(run_dir).summary.unlink(missing_ok=True)  # its reappearance is how we know the run finished
    secrets = Path(tempfile.mkdtemp(prefix="behemoth-flower-"))
    processes = Processes(log_dir, flower_env(secrets / "home"))
    try:
        _deploy(cfg, run_dir, resume, secrets, processes, show, verbose, echo)
    finally:
        processes.stop_all()
        shutil.rmtree(secrets, ignore_errors=True)


def _deploy(
    cfg: RunConfig,
    run_dir: Path,
    resume: bool,
    secrets: Path,
    processes: Processes,
    show: Callable[[str], None],
    verbose: bool,
    echo: TextIO | None,
) -> None:
    deploy, clients = cfg.federate.deploy, cfg.federate.clients
    host, port = deploy.host, deploy.port or free_port(deploy.host)
    tls = make_tls(secrets / "tls", host) if deploy.tls else None
    write_connection(secrets / "home", f"{host}:{port}", tls)
    app_dir = secrets / "app"
    app_dir.mkdir()
    (app_dir / "pyproject.toml").write_text(app_pyproject(cfg))
    (secrets / "run-config.toml").write_text(
        f"run-dir = {json.dumps(str(run_dir))}\nresume = {str(resume).lower()}\n"
    )

    processes.start("superlink", superlink_argv(deploy, port, tls))
    wait_listening(host, port, processes, deploy.startup_timeout)

    keys = make_node_keys(secrets / "nodes", clients) if deploy.node_auth else [None] * clients
    if deploy.node_auth:  # the SuperLink admits only SuperNodes whose public key was registered
        register_nodes([public for _, public in keys], processes)
    own_config = RunDir(run_dir).config_file  # here every client's own config is the run's
    for i, pair in enumerate(keys):
        node = supernode_argv(f"{host}:{port}", i, clients, own_config, tls.ca_cert if tls else None)
        node += ["--auth-supernode-private-key", str(pair[0])] if pair is not None else []
        processes.start(f"supernode-{i}", node)

    # flwr run submits the app and streams the ServerApp's log until the run ends
    run = subprocess.Popen(
        [
            "flwr",
            "run",
            str(app_dir),
            CONNECTION,
            "--stream",
            "--run-config",
            str(secrets / "run-config.toml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=processes.env,
        start_new_session=True,
    )
    processes.started.append(("flwr-run", run))
    threading.Thread(target=_watch, args=(processes, run), daemon=True).start()
    tail: list[str] = []
    with open(processes.log_dir / "flwr-run.log", "w") as transcript:
        for line in run.stdout:
            transcript.write(line)
            text = line.rstrip("\n")
            if LOG_PREFIX in text:
                show(text.split(LOG_PREFIX, 1)[1])
            elif verbose and echo is not None:
                print(text, file=echo, flush=True)
            tail = (tail + [text])[-15:]
    run.wait()
    if not RunDir(run_dir).summary.is_file():
        last = next((line.strip() for line in reversed(tail) if line.strip()), "")
        raise BehemothError(
            f"the deployed run did not finish (flwr run exit code {run.returncode}; last line: "
            f"{last[-200:]!r}); logs in {processes.log_dir}"
        )


def write_connection(home: Path, address: str, tls: TLSFiles | None) -> None:
    """$FLWR_HOME/config.toml naming the SuperLink connection that `flwr run` and `flwr supernode
    register` use: its address and the CA it is trusted by (None: insecure)."""
    home.mkdir(parents=True, exist_ok=True)
    connection = {
        "address": address,
        **({"root-certificates": str(tls.ca_cert)} if tls else {"insecure": True}),
    }
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in connection.items())
    )


def superlink_argv(deploy: DeployConfig, port: int, tls: TLSFiles | None) -> list[str]:
    """flower-superlink on deploy.host:port: TLS with `tls` (None: --insecure), and node authentication."""
    argv = ["flower-superlink", "--host", deploy.host, "--port", str(port)]
    argv += ["--disable-runtime-dependency-installation"]
    if tls is None:
        argv += ["--insecure"]
    else:
        argv += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert)]
        argv += ["--ssl-keyfile", str(tls.server_key)]
    return argv + (["--enable-supernode-auth"] if deploy.node_auth else [])


def supernode_argv(
    superlink: str, index: int, clients: int, own_config: Path, ca_cert: Path | None
) -> list[str]:
    """flower-supernode number `index`: its partition and its own config in its node config, the CA it
    trusts the SuperLink by (None: --insecure)."""
    node_config = (
        f"partition-id={index} num-partitions={clients} behemoth-config={json.dumps(str(own_config))}"
    )
    argv = ["flower-supernode", "--superlink", superlink, "--port", str(free_port("127.0.0.1"))]
    argv += ["--node-config", node_config]
    return argv + (["--root-certificates", str(ca_cert)] if ca_cert is not None else ["--insecure"])


def _watch(processes: Processes, run: subprocess.Popen) -> None:
    """End `flwr run` if the SuperLink dies under it (it would otherwise wait for replies until the
    timeout)."""
    superlink = processes.started[0][1]
    while run.poll() is None:
        if superlink.poll() is not None:
            run.terminate()
            return
        time.sleep(1.0)


def register_nodes(public_keys: list[Path], processes: Processes) -> None:
    """`flwr supernode register KEY` for every SuperNode, all at once (each is a CLI start-up)."""
    running = [
        subprocess.Popen(
            ["flwr", "supernode", "register", str(key), CONNECTION],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=processes.env,
        )
        for key in public_keys
    ]
    for i, proc in enumerate(running):
        output = proc.communicate(timeout=120)[0]
        if proc.returncode != 0 or "success" not in output:
            raise BehemothError(
                f"registering SuperNode {i} failed (exit code {proc.returncode}): {output.strip()[-300:]}"
            )
