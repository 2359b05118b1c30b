"""`behemoth demo`: the main job on the built-in default (MNIST): train -> evaluate -> compress -> explain ->
a short federated run -> one HTML report.

Each stage runs through the same functions as its own command, so the demo is also a smoke test of the
whole chain; it prints where the report is. Its runs live in runs/demo (the federated one in
runs/demo/federated, where the report finds it).
"""

import time
from pathlib import Path

import typer
from rich.console import Console

from behemoth.cli.app import app, resolve_config

console = Console()

# The federated stage: the demo's CNN on 10 MNIST silos of 1,200 images each, half of them per round.
# Short on purpose (3 rounds); `behemoth federate federated-mnist` is McMahan et al.'s full setting.
FEDERATED_OVERRIDES = [
    "name=federated", "data.train_limit=12000", "federate.clients=10", "federate.fraction=0.5",
    "federate.min_clients=5", "federate.local_epochs=1", "federate.local_batch=32", "federate.rounds=3",
    "federate.target_accuracy=1.0", "train.lr=0.05", "train.momentum=0.9",
]


# --quick: the same chain on a slice of MNIST, in about a minute (a smoke test of an install, and of the code)
QUICK_OVERRIDES = ["data.train_limit=12000", "data.test_limit=2000", "train.epochs=2", "compress.latency_repeats=5"]
QUICK_FEDERATED = ["data.train_limit=2000", "data.test_limit=2000", "federate.clients=4", "federate.fraction=1.0",
                   "federate.min_clients=4", "federate.rounds=1"]


def banner(step: int, total: int, text: str) -> None:
    console.rule(f"[bold]demo {step}/{total}: {text}")


@app.command()
def demo(
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/demo if it exists."),
    runs_dir: str = typer.Option("runs", help="Where to put the demo run."),
    samples: int = typer.Option(8, min=1, help="Test images to explain."),
    federated: bool = typer.Option(True, "--federated/--no-federated",
                                   help="Include the short federated run (Flower simulation on Ray)."),
    quick: bool = typer.Option(False, "--quick", help="The same chain on 12,000 training images, two epochs and "
                               "one federated round: under a minute, for checking an install (accuracy ~98%)."),
) -> None:
    """The whole chain on MNIST: train the default CNN, evaluate it, compress it (pruning, int8, zstd: a .bhm
    file measured from disk), explain it (Integrated Gradients with fidelity figures), train the same CNN
    federated over 10 private silos (Flower), and write one HTML report. Prints test accuracy and the report's
    path."""
    from behemoth.cli.compress_cmd import print_table
    from behemoth.cli.eval_cmds import evaluate_run
    from behemoth.cli.explain_cmd import print_fidelity
    from behemoth.cli.federate_cmd import print_summary as print_federated
    from behemoth.cli.federate_cmd import run_federation
    from behemoth.cli.train_cmd import print_summary
    from behemoth.compression.pipeline import compress_run
    from behemoth.config import load_config
    from behemoth.explanations.run import explain_run
    from behemoth.pipeline import run_training
    from behemoth.reporting import build_report

    started = time.perf_counter()
    cfg = load_config(resolve_config("mnist-cnn"), ["name=demo", f"runs_dir={runs_dir!r}",
                                                    f"explain.samples={samples}", *(QUICK_OVERRIDES if quick else [])])
    stages = 6 if federated else 5
    banner(1, stages, f"train a CNN on MNIST ({'12,000' if quick else '60,000'} images, offline) on this machine")
    summary = run_training(cfg, overwrite=overwrite)
    print_summary(summary)
    run_dir = Path(summary["run"])

    banner(2, stages, "evaluate on the test set (precision, recall, F1, confusion matrix)")
    metrics = evaluate_run(run_dir, "test", run_dir / "eval.json", show=False)
    console.print(f"test accuracy {metrics['acc']:.4f}, macro F1 {metrics['f1_macro']:.4f}")

    cc = cfg.compress
    banner(3, stages, f"compress (prune {cc.prune:.0%}, {cc.quant}, {cc.code}): file bytes, accuracy, latency")
    result = compress_run(run_dir, cfg, say=console.print, show_progress=True)
    print_table(result.rows, run_dir.name)

    banner(4, stages, f"explain {samples} test predictions (Integrated Gradients, fidelity figures)")
    record = explain_run(run_dir, cfg, cfg.explain)
    print_fidelity(record)

    step = 5
    if federated:
        fed_cfg = federated_config(cfg, run_dir, QUICK_FEDERATED if quick else [])
        banner(step, stages, f"federated: the same CNN over {fed_cfg.federate.clients} private MNIST silos, FedAvg on "
                             f"Flower ({fed_cfg.federate.rounds} rounds)")
        run_federation(fed_cfg, run_dir / "federated", overwrite=True)
        print_federated(run_dir / "federated")
        step += 1

    banner(step, stages, "write the report")
    html_path, _ = build_report(run_dir)
    console.print(f"demo done in {time.perf_counter() - started:.0f}s: test accuracy {metrics['acc']:.4f}")
    console.print(f"report: {html_path}")


def federated_config(cfg, run_dir: Path, extra: list[str]):
    """federated-mnist, shortened, training the demo's own CNN (its [model] section), kept in run_dir."""
    from behemoth.config import apply_overrides, config_from_dict
    from behemoth.config.loader import read_toml

    raw = read_toml(resolve_config("federated-mnist"))
    raw["model"] = cfg.model.model_dump()
    raw = apply_overrides(raw, [f"runs_dir={str(run_dir)!r}", *FEDERATED_OVERRIDES, *extra])
    return config_from_dict(raw, source="federated-mnist (demo)")
