"""Logging as hooks: a progress display, metrics.jsonl and TensorBoard. Only rank 0 gets these."""

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from behemoth.training.hooks import BaseHook


class Throughput:
    """Samples per second over the window since the last read."""

    def __init__(self) -> None:
        self.time, self.samples = time.perf_counter(), 0

    def read(self, samples_seen: int) -> float:
        now = time.perf_counter()
        rate = (samples_seen - self.samples) / max(now - self.time, 1e-9)
        self.time, self.samples = now, samples_seen
        return rate


def mfu_text(metrics: dict[str, float]) -> str:
    """' MFU 12.3%' when an MFUHook (behemoth.training.mfu) ran before this hook, else nothing."""
    return f" MFU {metrics['mfu']:.1%}" if "mfu" in metrics else ""


class ProgressHook(BaseHook):
    """A rich progress bar on a terminal; one plain line every `log_every` steps otherwise."""

    def __init__(self, stream: TextIO | None = None, force_plain: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream)
        self.plain = force_plain or not self.console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.rate = Throughput()
        self.last: dict[str, float] = {}

    def on_train_start(self, ctx: Any) -> None:
        self.rate = Throughput()
        self.rate.samples = ctx.samples_seen
        if self.plain:
            self._line(
                f"training {ctx.total_steps} steps "
                f"({ctx.cfg.epochs} epochs x {ctx.feed.steps_per_epoch} steps)"
                f" from step {ctx.step}"
            )
            return
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn(
                "loss {task.fields[loss]:.4f} acc {task.fields[acc]:.4f} {task.fields[rate]:,.0f} samples/s"
                "{task.fields[mfu]}"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train",
            total=ctx.total_steps,
            completed=ctx.step,
            epoch=f"{ctx.epoch + 1}/{ctx.cfg.epochs}",
            loss=0.0,
            acc=0.0,
            rate=0.0,
            mfu="",
        )

    def on_step_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        self.last = metrics
        if ctx.step % ctx.cfg.log_every and ctx.step != ctx.total_steps:
            if self.progress is not None:  # cheap: rich redraws on its own thread
                self.progress.update(
                    self.task,
                    completed=ctx.step,
                    epoch=f"{ctx.epoch + 1}/{ctx.cfg.epochs}",
                    loss=metrics["train.loss"],
                    acc=metrics["train.acc"],
                )
            return
        rate = self.rate.read(ctx.samples_seen)
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=ctx.step,
                epoch=f"{ctx.epoch + 1}/{ctx.cfg.epochs}",
                loss=metrics["train.loss"],
                acc=metrics["train.acc"],
                rate=rate,
                mfu=mfu_text(metrics),
            )
        else:
            self._line(
                f"epoch {ctx.epoch + 1}/{ctx.cfg.epochs} step {ctx.step}/{ctx.total_steps} "
                f"loss {metrics['train.loss']:.4f} acc {metrics['train.acc']:.4f} "
                f"lr {metrics['lr']:.3g} {rate:,.0f} samples/s{mfu_text(metrics)}"
            )

    def on_eval_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        shown = {k: v for k, v in metrics.items() if k.startswith("val.")}
        if shown:
            text = " ".join(f"{k} {v:.4f}" for k, v in shown.items())
            self._line(f"step {ctx.step}: {text}")

    def on_train_end(self, ctx: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
        if ctx.stop_reason:
            self._line(f"stopped: {ctx.stop_reason}")

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, file=self.stream, flush=True)


class JsonlHook(BaseHook):
    """Appends one JSON object per logged step and per evaluation to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rate = Throughput()

    def on_train_start(self, ctx: Any) -> None:
        self.rate.samples = ctx.samples_seen

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_step_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        if ctx.step % ctx.cfg.log_every == 0 or ctx.step == ctx.total_steps:
            self._write(
                {
                    "kind": "train",
                    "step": ctx.step,
                    "epoch": ctx.epoch,
                    **metrics,
                    "samples_per_second": self.rate.read(ctx.samples_seen),
                }
            )

    def on_eval_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        self._write({"kind": "eval", **metrics})


class TensorBoardHook(BaseHook):
    """Scalars for TensorBoard under <run>/tb (loss, accuracy, learning rate, validation metrics)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported lazily: tensorboard is slow to import

        self.writer = SummaryWriter(str(log_dir))

    def on_step_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        if ctx.step % ctx.cfg.log_every == 0:
            for key, value in metrics.items():
                self.writer.add_scalar(key.replace(".", "/"), value, ctx.step)

    def on_eval_end(self, ctx: Any, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key.startswith("val."):
                self.writer.add_scalar(key.replace(".", "/"), value, ctx.step)
        self.writer.flush()

    def on_train_end(self, ctx: Any) -> None:
        self.writer.close()
