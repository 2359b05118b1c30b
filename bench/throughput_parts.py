"""What both rows of bench/lm_throughput.py share: step timing (a behemoth hook that is also a Trainer
callback), the steady step time, and one row's summary over rounds."""

import statistics
import time

from bench.results import spread

SEQ, WARM_STEPS = 128, 5


def steady(seconds: list[float]) -> float:
    """Median step time after the warm-up steps."""
    return statistics.median(seconds[WARM_STEPS:] or seconds)


class StepTimer:
    """A behemoth hook (and, as on_step_begin/on_step_end, a Trainer callback) recording step seconds."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.t0 = time.perf_counter()

    def on_train_start(self, *args, **kwargs) -> None:
        self.t0 = time.perf_counter()

    def on_step_end(self, *args, **kwargs) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self.t0)
        self.t0 = now


def timed_behemoth_run(cfg) -> tuple[list[float], object]:
    """Train cfg through behemoth's engine with a step timer: (seconds per step, the assembled parts)."""
    from behemoth.training import BaseHook, train
    from behemoth.training.assembly import assemble

    parts = assemble(cfg)
    timer = StepTimer()
    hook = type(
        "Timer", (BaseHook,), {"on_train_start": timer.on_train_start, "on_step_end": timer.on_step_end}
    )
    train(parts.model, parts.data, cfg.train, cfg.data.batch_size, hooks=[hook()], feed=parts.feed)
    return timer.seconds, parts


def summarize(runs: list[dict], other: str) -> dict:
    ours = [r["behemoth_tokens_per_s"] for r in runs]
    theirs = [r[f"{other}_tokens_per_s"] for r in runs]
    row = {
        "behemoth_tokens_per_s": spread(ours),
        f"{other}_tokens_per_s": spread(theirs),
        "speedup": statistics.median(ours) / statistics.median(theirs),
        "rounds": runs,
    }
    for side in ("behemoth", other):
        key = f"{side}_val_loss"
        if key in runs[0]:
            row[key] = spread([r[key] for r in runs])
    return row
