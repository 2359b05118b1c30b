"""`behemoth lr-find` (learning-rate range test) and `behemoth tune` (hyperparameter search on Optuna)."""

import os
import tomllib
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from behemoth.cli.app import app, resolve_config, split_config_args
from behemoth.config import apply_overrides, config_from_dict, dump_config, load_config
from behemoth.config.loader import read_toml
from behemoth.errors import BehemothError, ConfigError
from behemoth.runs import create_run_dir, run_path, write_config, write_json

console = Console(stderr=False, highlight=False, soft_wrap=True)  # trial lines stay one line each

CONFIG_HELP = "CONFIG (a .toml file or a recipe name such as digits) followed by overrides like train.lr=0.05"


@app.command("lr-find", no_args_is_help=False)
def lr_find(
    args: list[str] = typer.Argument(None, help=CONFIG_HELP),
    start: float = typer.Option(1e-6, "--start", min=0, help="Learning rate of the first step."),
    end: float = typer.Option(10.0, "--end", help="Learning rate of the last step."),
    steps: int = typer.Option(200, "--steps", min=10, help="Training steps (the lr grows exponentially)."),
    out: Path = typer.Option(None, "--out", help="PNG to write (JSON beside it); default runs/<name>-lr-find/lr_find.png."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress lines."),
) -> None:
    """Learning-rate range test: train briefly with an exponentially growing lr; suggest an lr and plot loss vs lr.

    Uses the config's model, data, optimizer and batch size; the suggestion is where the smoothed loss
    falls fastest. The model is trained from scratch and thrown away.
    """
    from behemoth.pipeline import prepare  # torch only once a command runs: --help stays fast
    from behemoth.tuning.lr_finder import find_lr, plot_lr_find

    if not 0 < start < end:
        raise BehemothError(f"--start {start:g} --end {end:g}: need 0 < start < end")
    config_arg, overrides = split_config_args(args or [])
    cfg = load_config(resolve_config(config_arg or "mnist-cnn"), overrides)
    out = out or run_path(cfg).parent / f"{cfg.name}-lr-find" / "lr_find.png"
    if out.suffix.lower() != ".png":
        raise BehemothError(f"--out {out}: expected a .png path")
    data, model = prepare(cfg)
    every = max(steps // 10, 1)

    def show(step: int, lr: float, loss: float) -> None:
        if not no_progress and (step + 1) % every == 0:
            console.print(f"step {step + 1}/{steps}  lr {lr:.2e}  smoothed loss {loss:.4f}")

    result = find_lr(model, data, cfg.train, cfg.data.batch_size, start, end, steps, on_step=show)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_lr_find(result, out, title=f"lr range test: {cfg.name} ({cfg.model.name}, {cfg.train.optimizer})")
    write_json(out.with_suffix(".json"), {
        "suggestion": result.suggestion, "min_loss_lr": result.min_loss_lr, "stop_reason": result.stop_reason,
        "notes": result.notes, "optimizer": cfg.train.optimizer, "batch_size": cfg.data.batch_size,
        "lrs": result.lrs, "losses": result.losses, "raw_losses": result.raw_losses,
    })
    console.print(f"{result.stop_reason}: {len(result.lrs)} steps, lr {result.lrs[0]:.1e} .. {result.lrs[-1]:.1e}")
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"suggested lr {result.suggestion:.3g} (steepest descent; lowest loss at {result.min_loss_lr:.3g})")
    console.print(f"plot {out}; try: behemoth train {config_arg or 'mnist-cnn'} train.lr={result.suggestion:.3g}")


@app.command("tune", no_args_is_help=False)
def tune(
    args: list[str] = typer.Argument(None, help=CONFIG_HELP + "; the config needs a tune.space table"),
    trials: int = typer.Option(None, "--trials", min=1, help="Total trials in the study (default: tune.trials)."),
    timeout: float = typer.Option(None, "--timeout", min=0, help="Stop starting trials after this many seconds."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Trials in parallel (threads; CPU threads are split between them)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the study in this run directory (e.g. after a kill)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace runs/<name> if it exists."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No line per trial."),
) -> None:
    """Hyperparameter search (Optuna TPE) over the tune.space table, pruning bad trials on per-epoch validation.

    Writes runs/<name>/: study.sqlite3 (resumable with --resume), trials.csv, best.toml (a ready config:
    `behemoth train runs/<name>/best.toml`), best.json, history.png, importances.png.
    """
    import torch

    from behemoth.tuning.space import check_values
    from behemoth.tuning.study import TrialRunner, open_study, run_trials, write_results

    config_arg, overrides = split_config_args(args or [])
    if resume is not None:
        if config_arg or overrides:
            raise BehemothError("--resume takes the run directory; the study keeps the config it started with")
        if not (resume / "config.toml").is_file():
            raise BehemothError(f"{resume} is not a tune run directory (no config.toml)")
        run_dir, source = resume, str(resume / "config.toml")
        raw = read_toml(source)
    else:
        source = str(resolve_config(config_arg or "mnist-cnn"))
        raw = apply_overrides(read_toml(source), overrides)
    cfg = config_from_dict(raw, source)
    if not cfg.tune.space:
        raise ConfigError(f"{source}: tune.space is empty: add e.g. [tune.space] \"train.lr\" = "
                          "{log_uniform = [1e-4, 1.0]}")
    raw = tomllib.loads(dump_config(cfg))  # trials start from the resolved config (what config.toml holds)
    check_values(raw, cfg.tune.space)
    if trials is not None:
        cfg.tune.trials = trials  # kept in config.toml, so a --resume without --trials finishes this count
    if resume is None:
        run_dir = create_run_dir(run_path(cfg), overwrite)
    write_config(run_dir, cfg)
    total = cfg.tune.trials
    # Trials run as Optuna threads sharing one process: torch releases the GIL inside its kernels, so
    # threads overlap the heavy work, and loaded data are shared. Intra-op threads are one process-wide
    # setting, so each trial gets an equal share of the cores (oversubscribing slows everyone down).
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // jobs))
    study = open_study(cfg, run_dir, resume=resume is not None)
    done = sum(t.state.is_finished() and t.state.name != "FAIL" for t in study.trials)
    console.print(f"study {cfg.name}: {cfg.tune.resolved_direction} {cfg.tune.objective} over "
                  f"{', '.join(cfg.tune.space)}; {total} trials ({done} done), pruner {cfg.tune.pruner}, "
                  f"{jobs} at a time -> {run_dir}")
    runner = TrialRunner(cfg, raw, log=(lambda line: None) if no_progress else console.print)
    run_trials(study, runner, total, timeout or cfg.tune.timeout, jobs)
    summary = write_results(study, cfg, raw, run_dir)
    print_study(study, summary, run_dir)


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
        table.add_row(str(t.number), f"{t.value:.4f}",
                      *(f"{v:.3g}" if isinstance(v, float) else str(v) for v in t.params.values()))
    console.print(table)
    console.print(f"best: trial {summary['best_trial']} {summary['objective']} = {summary['best_value']:.4f}")
    console.print(f"best config {run_dir / 'best.toml'}: behemoth train {run_dir / 'best.toml'}")
