"""`behemoth.report(run)`: one self-contained HTML page and summary.json for a run directory."""

from collections.abc import Callable
from pathlib import Path

from behemoth.pipeline.evaluate import evaluate as evaluate_run
from behemoth.runs import RunDir, open_run


def report(
    run: str | Path, evaluate: bool = True, say: Callable[[str], None] = lambda text: None
) -> tuple[Path, Path]:
    """Write <run>/report/report.html and summary.json; with `evaluate`, first evaluate the test split when
    eval.json is missing (per-class scores and the confusion matrix)."""
    from behemoth.reporting import build_report  # matplotlib loads only when a report is written

    run_dir, _ = open_run(run)
    has_weights = RunDir(run_dir).weights.is_file() or RunDir(run_dir).checkpoints.is_dir()
    if evaluate and not RunDir(run_dir).evaluation.is_file() and has_weights:
        say("no eval.json yet: evaluating the test split first")
        evaluate_run(run_dir, "test", RunDir(run_dir).evaluation)
    return build_report(run_dir)
