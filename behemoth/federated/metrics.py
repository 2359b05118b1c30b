"""Per-round records: the global model on the test split, clients' training figures, failures, bytes
(with federate.adapters_only also `bytes.full`, what the full weights would have cost), time and privacy
spent, appended to runs/<name>/metrics.jsonl as `{"kind": "round", ...}` lines beside training's
`train`/`eval` records (`step` = round, so the same plots read them); a log line per round.
"""

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from behemoth.config.sizes import format_size
from behemoth.data.bundle import TensorSplit
from behemoth.errors import BehemothError
from behemoth.federated.exchange import load_arrays
from behemoth.federated.privacy import PrivacyLedger
from behemoth.federated.strategies import RoundStats
from behemoth.files import atomic_write_text
from behemoth.runs import RunDir
from behemoth.spec import DataSpec
from behemoth.training import evaluate

log = logging.getLogger("behemoth.federated")
LOG_PREFIX = "[federate] "  # lets `behemoth federate --deploy` pick our lines out of Flower's log stream


class TargetReached(Exception):
    """Raised from the evaluation callback to end Flower's round loop once the target accuracy is met
    (Strategy.start has no early stop)."""


class SimulatedServerCrash(BehemothError):
    """federate.faults.crash_after_round: the server dies right after checkpointing that round."""


def attach_run_log(run_dir: Path, stream: TextIO | None = sys.stderr) -> None:
    """Our log lines to <run>/federate.log and to `stream`; Flower's own logger stays as it is."""
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    targets: list[logging.Handler] = [logging.FileHandler(RunDir(run_dir).federate_log)]
    if stream is not None:
        targets.append(logging.StreamHandler(stream))
    for handler in targets:
        handler.setFormatter(logging.Formatter(LOG_PREFIX + "%(message)s"))
        log.addHandler(handler)


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_records(path: Path, last_round: int) -> None:
    """Drop round records after `last_round` (written before a crash, never checkpointed)."""
    records = read_records(path)
    kept = [r for r in records if r.get("kind") != "round" or r["round"] <= last_round]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class RoundSource(Protocol):
    """What the recorder reads from a strategy: rounds numbered after a resume, and each round's facts
    (GuardedStrategy, SecAggStrategy)."""

    offset: int
    stats: dict[int, RoundStats]


class RoundRecorder:
    """Flower's `evaluate_fn`: called with the global arrays before the first round and after each round.

    Evaluates on the test split, writes the round's record (with `tags` such as {"secagg": True}), hands
    the round to `on_round` (checkpoint), and ends the run early at the target accuracy.
    """

    def __init__(
        self,
        run_dir: Path,
        model: nn.Module,
        test: TensorSplit,
        spec: DataSpec,
        settings: dict[str, Any],
        strategy: RoundSource,
        ledger: PrivacyLedger,
        total_rounds: int,
        target: float | None,
        crash_after: int | None,
        on_round: Callable[[int, ArrayRecord], None],
        tags: dict[str, Any] | None = None,
        adapters_only: bool = False,
    ) -> None:
        self.path = RunDir(run_dir).metrics
        self.model, self.test, self.spec, self.settings = model, test, spec, settings
        self.strategy, self.ledger, self.total = strategy, ledger, total_rounds
        self.target, self.crash_after, self.on_round = target, crash_after, on_round
        self.tags = dict(tags or {})
        self.adapters_only = adapters_only  # the arrays are the LoRA adapters (federate.adapters_only)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        r = server_round + self.strategy.offset
        if server_round == 0 and r > 0:
            return None  # resumed: the round we start from was recorded before the crash
        started = time.perf_counter()
        load_arrays(self.model, arrays, self.adapters_only)
        result = evaluate(self.model, self.test, self.spec, **self.settings)
        stats = self.strategy.stats.pop(r, None)
        record = self.record(r, result, stats, time.perf_counter() - started)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if r > 0:
            self.on_round(r, arrays)
        log.info(self.line(record))
        if self.target is not None and result["acc"] >= self.target:
            log.info("round %d: test accuracy %.4f reached the target %.4f", r, result["acc"], self.target)
            raise TargetReached(r)
        if self.crash_after == r:
            raise SimulatedServerCrash(
                f"simulated server crash after round {r} (federate.faults.crash_after_round)"
            )
        return MetricRecord({"test-loss": result["loss"], "test-acc": result["acc"]})

    def record(
        self, r: int, result: dict[str, float], stats: RoundStats | None, eval_seconds: float
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "kind": "round",
            "round": r,
            "step": r,
            "test.loss": result["loss"],
            "test.acc": result["acc"],
            "eval_seconds": eval_seconds,
            **self.tags,
        }
        if stats is not None:
            record.update(
                {
                    "seconds": time.perf_counter() - stats.started,
                    "clients.sampled": stats.sampled,
                    "clients.replied": stats.replied,
                    "clients.failed": len(stats.failed),
                    "clients.rejected": len(stats.rejected),
                    "clients.told_to_fail": stats.told_to_fail,
                    "bytes.sent": stats.bytes_sent,
                    "bytes.received": stats.bytes_received,
                    "aggregated": stats.aggregated,
                    "clients.partitions": stats.partitions,
                }
            )
            if self.adapters_only and stats.bytes_full:  # the same messages with the full weights (SecAgg+'s
                record["bytes.full"] = stats.bytes_full  # masked stages are not priced: left out there)
            record.update(
                {
                    f"train.{k.removeprefix('train-')}": v
                    for k, v in stats.train_metrics.items()
                    if k.startswith("train-")
                }
            )
            record.update({f"clients.{k}": v for k, v in stats.client_eval.items()})
        if self.ledger.mode != "off":
            record.update(
                {
                    "epsilon": self.ledger.epsilon(),
                    "delta": self.ledger.delta,
                    "noise_multiplier": self.ledger.noise,
                }
            )
        return record

    def line(self, record: dict[str, Any]) -> str:
        text = (
            f"round {record['round']}/{self.total}: "
            f"test acc {record['test.acc']:.4f} loss {record['test.loss']:.4f}"
        )
        if "seconds" in record:
            text += (
                f" | {record['clients.replied']}/{record['clients.sampled']} clients replied, "
                f"{record['clients.failed']} failed, {record['clients.rejected']} rejected"
                f" | sent {format_size(record['bytes.sent'])}, "
                f"received {format_size(record['bytes.received'])}"
            )
            if "bytes.full" in record:
                text += f" (adapters only; full weights: {format_size(record['bytes.full'])})"
            text += f" | {record['seconds']:.1f}s"
        if "epsilon" in record:
            text += f" | epsilon {record['epsilon']:.3f} (delta {record['delta']:g})"
        return text


def summarize(records: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """Totals over a run's round records (across resumes): rounds, accuracy, time, bytes, privacy."""
    rounds = [r for r in records if r.get("kind") == "round"]
    done = [r for r in rounds if r["round"] > 0]
    final = rounds[-1] if rounds else {}
    reached = next((r["round"] for r in rounds if target is not None and r["test.acc"] >= target), None)
    summary: dict[str, Any] = {
        "rounds": final.get("round", 0),
        "test": {"acc": final.get("test.acc"), "loss": final.get("test.loss")},
        "best_test_acc": max((r["test.acc"] for r in rounds), default=None),
        "target_accuracy": target,
        "rounds_to_target": reached,
        "seconds": sum(r.get("seconds", 0.0) for r in done),
        "bytes_sent": sum(r.get("bytes.sent", 0) for r in done),
        "bytes_received": sum(r.get("bytes.received", 0) for r in done),
        **({"bytes_full": sum(r["bytes.full"] for r in done)} if done and "bytes.full" in done[-1] else {}),
        "client_failures": sum(r.get("clients.failed", 0) for r in done),
        "rejected_updates": sum(r.get("clients.rejected", 0) for r in done),
    }
    if "epsilon" in final:
        summary.update(
            epsilon=final["epsilon"], delta=final["delta"], noise_multiplier=final["noise_multiplier"]
        )
    return summary
