"""`behemoth.tune(config)` (Optuna search over [tune.space]) and `behemoth.lr_find(cfg)` (lr range test)."""

import os
import threading
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from behemoth.config import RunConfig, apply_overrides, config_from_dict, dump_config
from behemoth.config.loader import read_toml
from behemoth.errors import BehemothError, ConfigError
from behemoth.pipeline.config import checked, resolve_config
from behemoth.runs import RunDir, create_run_dir, run_path, write_config, write_json


@dataclass
class TuneResult:
    run_dir: Path
    summary: dict[str, Any]  # what best.json holds
    study: Any  # the optuna.Study, for callers that want every trial


@dataclass
class TrialRow:
    number: int
    state: str  # RUNNING, COMPLETE, PRUNED, FAIL, WAITING
    value: float | None
    params: dict[str, Any]
    worker: str | None  # host:pid of the process that ran it


def tune_config(
    config: str | Path | None, overrides: list[str] | None, resume: Path | None
) -> tuple[RunConfig, dict[str, Any], Path | None]:
    """(config, its resolved raw dict, run dir to resume or None): the study's base config."""
    if resume is not None:
        if config or overrides:
            raise BehemothError(
                "--resume takes the run directory; the study keeps the config it started with"
            )
        if not RunDir(Path(resume)).config_file.is_file():
            raise BehemothError(f"{resume} is not a tune run directory (no config.toml)")
        source = str(RunDir(Path(resume)).config_file)
        raw = read_toml(source)
    else:
        source = str(resolve_config(config or "mnist-cnn"))
        raw = apply_overrides(read_toml(source), list(overrides or []))
    cfg = checked(config_from_dict(raw, source))
    if not cfg.tune.space:
        raise ConfigError(
            f'{source}: tune.space is empty: add e.g. [tune.space] "train.lr" = {{log_uniform = [1e-4, 1.0]}}'
        )
    return cfg, tomllib.loads(dump_config(cfg)), Path(resume) if resume is not None else None


def tune(
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    jobs: int = 1,
    resume: Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    announce: Callable[[str], None] = print,
    watch: Callable[[list[TrialRow]], None] | None = None,
) -> TuneResult:
    """Hyperparameter search (Optuna TPE) over tune.space, pruning on per-epoch validation; writes
    runs/<name>/ (study.sqlite3, trials.csv, best.toml, best.json, plots) and returns the best.

    `announce` gets the study's opening line (what it searches, trials done), `log` one line per trial,
    `watch` every trial of the study (every worker's) about once a second while it runs."""
    import torch

    from behemoth.tuning.space import check_values
    from behemoth.tuning.study import TrialRunner, open_study, run_trials, write_results

    cfg, raw, resume = tune_config(config, overrides, resume)  # trials start from the resolved config
    check_values(raw, cfg.tune.space)
    if trials is not None:
        cfg.tune.trials = trials  # kept in config.toml, so a --resume without --trials finishes this count
    run_dir = resume if resume is not None else study_dir(cfg, overwrite)
    write_config(run_dir, cfg)
    # Trials run as Optuna threads sharing one process: torch releases the GIL inside its kernels, so
    # threads overlap the heavy work, and loaded data are shared. Intra-op threads are one process-wide
    # setting, so each trial gets an equal share of the cores (oversubscribing slows everyone down).
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // jobs))
    study = open_study(cfg, run_dir, resume=resume is not None)
    done = sum(t.state.is_finished() and t.state.name != "FAIL" for t in study.trials)
    announce(
        f"study {cfg.name}: {cfg.tune.resolved_direction} {cfg.tune.objective} over "
        f"{', '.join(cfg.tune.space)}; {cfg.tune.trials} trials ({done} done), pruner {cfg.tune.pruner}, "
        f"{jobs} at a time -> {run_dir}"
    )
    with watching(study, watch):
        run_trials(study, TrialRunner(cfg, raw, log=log), cfg.tune.trials, timeout or cfg.tune.timeout, jobs)
    return TuneResult(run_dir, write_results(study, cfg, raw, run_dir), study)


@contextmanager
def watching(
    study: Any, watch: Callable[[list[TrialRow]], None] | None, every: float = 1.0
) -> Iterator[None]:
    """Call `watch` with the study's trials every `every` seconds (from a thread) until the block ends."""
    if watch is None:
        yield
        return
    done = threading.Event()

    def rows() -> list[TrialRow]:
        return [
            TrialRow(t.number, t.state.name, t.value, t.params, t.user_attrs.get("worker"))
            for t in study.get_trials(deepcopy=False)
        ]

    def loop() -> None:
        while not done.wait(every):
            watch(rows())

    thread = threading.Thread(target=loop, daemon=True, name="tune-watch")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        watch(rows())


def study_dir(cfg: RunConfig, overwrite: bool) -> Path:
    """A new run directory; with a shared database (tune.storage), a worker joining the study on this
    machine writes its files into the one another worker made."""
    path = run_path(cfg)
    if cfg.tune.storage is not None and not overwrite and RunDir(path).config_file.is_file():
        return path
    return create_run_dir(path, overwrite)


def lr_find(
    cfg: RunConfig,
    *,
    start: float = 1e-6,
    end: float = 10.0,
    steps: int = 200,
    out: Path | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> tuple[Any, Path]:
    """Learning-rate range test on cfg's model and data; writes the plot (and JSON beside it); returns the
    result (suggestion, losses, notes) and the plot's path."""
    from behemoth.training.assembly import assemble
    from behemoth.tuning.lr_finder import find_lr, plot_lr_find

    if not 0 < start < end:
        raise BehemothError(f"--start {start:g} --end {end:g}: need 0 < start < end")
    out = Path(out) if out is not None else run_path(cfg).parent / f"{cfg.name}-lr-find" / "lr_find.png"
    if out.suffix.lower() != ".png":
        raise BehemothError(f"--out {out}: expected a .png path")
    parts = assemble(cfg)
    result = find_lr(
        parts.model, parts.data, cfg.train, cfg.data.batch_size, start, end, steps, on_step=on_step
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_lr_find(result, out, title=f"lr range test: {cfg.name} ({cfg.model.name}, {cfg.train.optimizer})")
    write_json(
        out.with_suffix(".json"),
        {
            "suggestion": result.suggestion,
            "min_loss_lr": result.min_loss_lr,
            "stop_reason": result.stop_reason,
            "notes": result.notes,
            "optimizer": cfg.train.optimizer,
            "batch_size": cfg.data.batch_size,
            "lrs": result.lrs,
            "losses": result.losses,
            "raw_losses": result.raw_losses,
        },
    )
    return result, out
