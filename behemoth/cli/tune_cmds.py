"""`behemoth lr-find` (learning-rate range test) and `behemoth tune` (hyperparameter search on Optuna)."""

from contextlib import nullcontext
from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from behemoth import pipeline
from behemoth.cli.app import app, split_config_args
from behemoth.errors import BehemothError

console = Console(stderr=False, highlight=False, soft_wrap=True)  # trial lines stay one line each

CONFIG_HELP = "CONFIG (a .toml file or a recipe name such as digits) followed by overrides like train.lr=0.05"


@app.command("lr-find", no_args_is_help=False)
def lr_find(
    args: list[str] = typer.Argument(None, help=CONFIG_HELP),
    start: float = typer.Option(1e-6, "--start", min=0, help="Learning rate of the first step."),
    end: float = typer.Option(10.0, "--end", help="Learning rate of the last step."),
    steps: int = typer.Option(200, "--steps", min=10, help="Training steps (the lr grows exponentially)."),
    out: Path = typer.Option(
        None, "--out", help="PNG to write (JSON beside it); default runs/<name>-lr-find/lr_find.png."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress lines."),
) -> None:
    """Learning-rate range test: train briefly with an exponentially growing lr; suggest an lr and plot loss vs lr.

    Uses the config's model, data, optimizer and batch size; the suggestion is where the smoothed loss
    falls fastest. The model is trained from scratch and thrown away.
    """  # noqa: E501 - Typer's command list (behemoth --help) keeps the summary's line breaks as written
    config_arg, overrides = split_config_args(args or [])
    cfg = pipeline.load_config(config_arg or "mnist-cnn", overrides)
    every = max(steps // 10, 1)

    def show(step: int, lr: float, loss: float) -> None:
        if not no_progress and (step + 1) % every == 0:
            console.print(f"step {step + 1}/{steps}  lr {lr:.2e}  smoothed loss {loss:.4f}")

    result, out = pipeline.lr_find(cfg, start=start, end=end, steps=steps, out=out, on_step=show)
    console.print(
        f"{result.stop_reason}: {len(result.lrs)} steps, lr {result.lrs[0]:.1e} .. {result.lrs[-1]:.1e}"
    )
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(
        f"suggested lr {result.suggestion:.3g} (steepest descent; lowest loss at {result.min_loss_lr:.3g})"
    )
    console.print(
        f"plot {out}; try: behemoth train {config_arg or 'mnist-cnn'} train.lr={result.suggestion:.3g}"
    )


@app.command("tune", no_args_is_help=False)
def tune(
    args: list[str] = typer.Argument(None, help=CONFIG_HELP + "; the config needs a tune.space table"),
    trials: int = typer.Option(
        None, "--trials", min=1, help="Total trials in the study (default: tune.trials)."
    ),
    timeout: float = typer.Option(
        None, "--timeout", min=0, help="Stop starting trials after this many seconds."
    ),
    jobs: int = typer.Option(
        1, "--jobs", min=1, help="Trials in parallel (threads; CPU threads are split between them)."
    ),
    resume: Path = typer.Option(
        None, "--resume", help="Continue the study in this run directory (e.g. after a kill)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/<name> if it exists."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No line per trial."),
) -> None:
    """Hyperparameter search (Optuna TPE) over the tune.space table, pruning bad trials on per-epoch validation.

    Writes runs/<name>/: study.sqlite3 (resumable with --resume), trials.csv, best.toml (a ready config:
    `behemoth train runs/<name>/best.toml`), best.json, history.png, importances.png. With tune.storage set
    to a database URL (postgresql://user@host/db), several workers, on one machine or many, share one study:
    start the same command on each. A terminal shows a live table of every worker's trials.
    """  # noqa: E501 - Typer's command list (behemoth --help) keeps the summary's line breaks as written
    config_arg, overrides = split_config_args(args or [])
    live = not no_progress and console.is_terminal  # a live table of every worker's trials; else lines
    with Live(console=console, auto_refresh=False) if live else nullcontext() as display:
        result = pipeline.tune(
            config_arg,
            overrides,
            trials=trials,
            timeout=timeout,
            jobs=jobs,
            resume=resume,
            overwrite=overwrite,
            log=(lambda line: None) if no_progress or live else console.print,
            announce=console.print,
            watch=(lambda rows: display.update(trials_table(rows), refresh=True)) if live else None,
        )
    print_study(result.study, result.summary, result.run_dir)


def trials_table(rows: list, last: int = 20) -> Table:
    """The study's last `last` trials: state, value, params, and the worker that ran each."""
    counts = {
        state: sum(r.state == state for r in rows) for state in ("RUNNING", "COMPLETE", "PRUNED", "FAIL")
    }
    table = Table(title=", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    for column in ("trial", "state", "value", "params", "worker"):
        table.add_column(column, justify="right" if column in ("trial", "value") else "left")
    for r in rows[-last:]:
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.params.items())
        value = "" if r.value is None else f"{r.value:.4f}"
        table.add_row(str(r.number), r.state.lower(), value, params, r.worker or "")
    return table


def print_study(study, summary: dict, run_dir: Path, top: int = 5) -> None:
    counts = summary["trials"]
    console.print(f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed")
    if "best_value" not in summary:
        raise BehemothError(f"no trial completed; see {run_dir / 'trials.csv'}")
    maximize = summary["direction"] == "maximize"
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    ranked = sorted(complete, key=lambda t: t.value, reverse=maximize)[:top]
    table = Table(title=f"best {len(ranked)} trials ({summary['objective']})")
    table.add_column("trial", justify="right")
    table.add_column(summary["objective"], justify="right")
    for key in ranked[0].params:
        table.add_column(key)
    for t in ranked:
        table.add_row(
            str(t.number),
            f"{t.value:.4f}",
            *(f"{v:.3g}" if isinstance(v, float) else str(v) for v in t.params.values()),
        )
    console.print(table)
    console.print(f"best: trial {summary['best_trial']} {summary['objective']} = {summary['best_value']:.4f}")
    console.print(f"best config {run_dir / 'best.toml'}: behemoth train {run_dir / 'best.toml'}")
