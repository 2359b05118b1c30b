"""A study's pictures, drawn with matplotlib from the study's own numbers (files only, no display)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402


def plot_history(study: optuna.Study, objective: str, path: Path) -> None:
    """Each complete trial's value, and the best so far, against the trial number."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    numbers, values = [t.number for t in trials], [t.value for t in trials]
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best = [better(values[: i + 1]) for i in range(len(values))]
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(numbers, values, color="C0", label="complete trial")
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    last = []
    if pruned:  # a pruned trial has no final value: mark it at its last reported one
        last = [
            (t.number, t.intermediate_values[max(t.intermediate_values)])
            for t in pruned
            if t.intermediate_values
        ]
        if last:
            ax.scatter(*zip(*last), marker="x", color="0.5", label="pruned (last report)")
    shown = values + [v for _, v in last]
    if objective.endswith("loss") and shown and min(shown) > 0:
        ax.set_yscale("log")  # one diverged trial would otherwise flatten every good one onto the axis
    ax.set_xlabel("trial")
    ax.set_ylabel(objective + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(f"optimization history ({study.direction.name.lower()} {objective})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importances(study: optuna.Study, path: Path) -> dict[str, float]:
    """fANOVA importance of each parameter (Optuna's default evaluator); {} when there is too little to
    fit."""
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:  # e.g. fewer than two complete trials, or one parameter value
        importances, note = {}, f"importances unavailable: {exc}"
    else:
        note = ""
    fig, ax = plt.subplots(figsize=(7, 0.6 * max(len(importances), 2) + 1.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="C0")
    if note:
        ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title("hyperparameter importances")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {k: float(v) for k, v in importances.items()}
