"""`behemoth.demo()`: the main job on the built-in default (MNIST): train -> evaluate -> compress ->
explain -> a short federated run -> one HTML report, each through the same function as its own command.

Its runs live in <runs_dir>/demo (the federated one in runs/demo/federated, where the report finds it).
`on_stage(number, total, title)` announces each stage and `on_result(kind, result)` hands over what it
returned, so a caller (the CLI) can print as the chain goes.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from behemoth.compression.pipeline import compress_run
from behemoth.config import RunConfig, apply_overrides, config_from_dict
from behemoth.config.loader import read_toml
from behemoth.pipeline.config import load_run_config, precision_for_this_cpu, resolve_config
from behemoth.pipeline.evaluate import evaluate
from behemoth.pipeline.explain import explain
from behemoth.pipeline.federate import federate
from behemoth.pipeline.train import run_training
from behemoth.reporting import build_report
from behemoth.runs import RunDir

# The federated stage: the demo's CNN on 10 MNIST silos of 1,200 images each, half of them per round.
# Short on purpose (3 rounds); `behemoth federate federated-mnist` is McMahan et al.'s full setting.
FEDERATED_OVERRIDES = [
    "name=federated",
    "data.train_limit=12000",
    "federate.clients=10",
    "federate.fraction=0.5",
    "federate.min_clients=5",
    "federate.local_epochs=1",
    "federate.local_batch=32",
    "federate.rounds=3",
    "federate.target_accuracy=1.0",
    "train.lr=0.05",
    "train.momentum=0.9",
]
# quick: the same chain on a slice of MNIST, in about a minute (a smoke test of an install, and of the code)
QUICK_OVERRIDES = [
    "data.train_limit=12000",
    "data.test_limit=2000",
    "train.epochs=2",
    "compress.latency_repeats=5",
]
QUICK_FEDERATED = [
    "data.train_limit=2000",
    "data.test_limit=2000",
    "federate.clients=4",
    "federate.fraction=1.0",
    "federate.min_clients=4",
    "federate.rounds=1",
]


def federated_config(cfg: RunConfig, run_dir: Path, extra: list[str]) -> RunConfig:
    """federated-mnist, shortened, training the demo's own CNN (its [model] section), kept in run_dir."""
    raw = read_toml(resolve_config("federated-mnist"))
    raw["model"] = cfg.model.model_dump()
    overrides = [f"runs_dir={str(run_dir)!r}", *FEDERATED_OVERRIDES, *precision_for_this_cpu(), *extra]
    raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, source="federated-mnist (demo)")


def demo(
    runs_dir: str = "runs",
    samples: int = 8,
    federated: bool = True,
    quick: bool = False,
    overwrite: bool = False,
    on_stage: Callable[[int, int, str], None] = lambda n, total, title: None,
    on_result: Callable[[str, Any], None] = lambda kind, result: None,
) -> dict[str, Any]:
    """Run the chain; returns the test metrics, the report's path and the seconds it took."""
    started = time.perf_counter()
    cfg = load_run_config(
        "mnist-cnn",
        [
            "name=demo",
            f"runs_dir={runs_dir!r}",
            f"explain.samples={samples}",
            *precision_for_this_cpu(),
            *(QUICK_OVERRIDES if quick else []),
        ],
    )
    total = 6 if federated else 5
    on_stage(
        1, total, f"train a CNN on MNIST ({'12,000' if quick else '60,000'} images, offline) on this machine"
    )
    summary = run_training(cfg, overwrite=overwrite)
    on_result("train", summary)
    run_dir = Path(summary["run"])

    on_stage(2, total, "evaluate on the test set (precision, recall, F1, confusion matrix)")
    metrics = evaluate(run_dir, "test", RunDir(run_dir).evaluation)
    on_result("evaluate", metrics)

    cc = cfg.compress
    on_stage(
        3, total, f"compress (prune {cc.prune:.0%}, {cc.quant}, {cc.code}): file bytes, accuracy, latency"
    )
    on_result(
        "compress", compress_run(run_dir, cfg, say=lambda text: on_result("say", text), show_progress=True)
    )

    on_stage(4, total, f"explain {samples} test predictions (Integrated Gradients, fidelity figures)")
    on_result("explain", explain(run_dir))

    stage = 5
    if federated:
        fed_cfg = federated_config(cfg, run_dir, QUICK_FEDERATED if quick else [])
        on_stage(
            stage,
            total,
            f"federated: the same CNN over {fed_cfg.federate.clients} private MNIST silos, "
            f"FedAvg on Flower ({fed_cfg.federate.rounds} rounds)",
        )
        on_result("federate", federate(fed_cfg, RunDir(run_dir).federated, overwrite=True))
        stage += 1

    on_stage(stage, total, "write the report")
    html_path, _ = build_report(run_dir)
    return {"test": metrics, "report": html_path, "seconds": time.perf_counter() - started, "run": run_dir}
