"""`behemoth.federate(cfg)`: federated training on Flower (simulation, or a deployment on this machine), and
the per-client label histogram of a partition."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from behemoth.config import RunConfig
from behemoth.config.federate import check_deploy_security
from behemoth.data.tokenizers import save_run_tokenizer
from behemoth.errors import ConfigError, RunDirError
from behemoth.runs import RunDir, create_run_dir, run_path, write_config, write_spec
from behemoth.training.assembly import load_run_data


def federate(
    cfg: RunConfig,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    deploy: bool = False,
    overwrite: bool = False,
    verbose: bool = False,
    show: Callable[[str], None] = print,
    stream: TextIO | None = None,
    insecure: bool = False,
) -> dict[str, Any]:
    """Start (or continue) the federated run in `run_dir` (default runs/<name>); return its summary.json.

    `show` receives the deployment's progress lines; `stream` (default: none) the per-round log lines.
    `insecure` (--insecure) lets a deployment run without TLS on an address that is not loopback; without
    it, federate.deploy.tls = false is refused there before anything is written.
    """
    from behemoth.federated.metrics import attach_run_log  # flwr and torch load only when a run starts

    if insecure and not deploy:
        raise ConfigError("--insecure: only with --deploy (a simulation sends nothing over a network)")
    if deploy:
        check_deploy_security(cfg.federate.deploy, insecure)
    run_dir = Path(run_dir) if run_dir is not None else run_path(cfg)
    if resume:
        check_resumable(cfg, run_dir)
    else:
        data = load_run_data(cfg)  # fails on bad data before anything is written
        create_run_dir(run_dir, overwrite)
        write_config(run_dir, cfg)
        write_spec(run_dir, data.spec, data.class_names, data.meta)
        # a text run's tokenizer, as `behemoth train` saves it: export, generate and evaluate read it there
        save_run_tokenizer(RunDir(run_dir).tokenizer_file, data.tokenizer)
    attach_run_log(run_dir, stream=None if deploy else stream)
    if deploy:
        from behemoth.federated.deploy import run_deployed

        run_deployed(cfg, run_dir, resume, show=show, verbose=verbose, echo=stream, insecure=insecure)
    else:
        from behemoth.federated.simulate import run_simulated

        run_simulated(cfg, run_dir, resume, verbose=verbose)
    return json.loads(RunDir(run_dir).summary.read_text())


def check_resumable(cfg: RunConfig, run_dir: Path) -> None:
    """A run that reached its target or its last round has nothing to continue."""
    from behemoth.federated.state import load_latest

    saved = load_latest(run_dir)
    done = saved.round if saved is not None else 0
    summary = RunDir(run_dir).summary
    reached = summary.is_file() and json.loads(summary.read_text()).get("stop_reason") == "target"
    if done >= cfg.federate.rounds or reached:
        raise RunDirError(
            f"{run_dir} already finished after {done} rounds"
            + ("" if reached else "; raise federate.rounds to continue")
        )


@dataclass
class PartitionView:
    """Rows per class for each client, and how far each client's label mix is from the whole's."""

    histogram: list[list[int]]  # (clients, classes)
    class_names: list[str]
    rows: int
    skew: float  # mean total-variation distance to the overall label mix


def partition_view(cfg: RunConfig) -> PartitionView:
    from behemoth.federated.partition import label_histogram, label_skew, partition

    data = load_run_data(cfg)
    labels = data.train.y
    histogram = label_histogram(labels, partition(labels, cfg.federate), data.spec.num_classes)
    names = data.class_names or [str(k) for k in range(data.spec.num_classes)]
    return PartitionView(histogram.tolist(), names, len(labels), float(label_skew(histogram)))
