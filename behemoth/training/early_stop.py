"""Early stopping on a monitored metric: stop after `patience` evaluations without improvement."""

import math
from dataclasses import dataclass

from behemoth.config import EarlyStopConfig


@dataclass
class EarlyStopping:
    cfg: EarlyStopConfig
    best: float | None = None
    bad_evals: int = 0

    @property
    def enabled(self) -> bool:
        return self.cfg.patience > 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.cfg.mode == "min":
            return value < self.best - self.cfg.min_delta
        return value > self.best + self.cfg.min_delta

    def update(self, metrics: dict[str, float]) -> bool:
        """Record one evaluation; return True when training should stop."""
        if self.cfg.monitor not in metrics:
            raise KeyError(
                f"train.early_stop.monitor = {self.cfg.monitor!r}: not logged (logged: {sorted(metrics)})"
            )
        value = float(metrics[self.cfg.monitor])
        if not math.isfinite(value):
            return self.enabled
        if self.improved(value):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        return self.enabled and self.bad_evals >= self.cfg.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evals = state["best"], state["bad_evals"]
