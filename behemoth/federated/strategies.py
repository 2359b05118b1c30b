"""The server's strategy: one of Flower's (flwr.serverapp.strategy), optionally inside Flower's DP wrapper,
inside a guard of our own.

The guard is a Strategy wrapper, the way Flower composes DP: it numbers rounds after a resume, tells a
share of the sampled clients to fail (simulated dropouts), drops failed replies and non-finite updates
with a log line before the inner strategy sees them (Flower's DP wrapper would otherwise skip the whole
round on one error, and a NaN would poison any average), counts payload bytes (and, when only LoRA adapters
travel, what the full weights would have cost), and keeps the per-round facts that metrics.py writes.

The strategies themselves are STRATEGY_REGISTRY, one StrategyEntry per `federate.strategy` name. Adding one:
its name in behemoth.config.federate.STRATEGIES (the config stays free of flwr), an entry here, and a row
in tests/test_federate_parts.py's STRATEGY_CASES (a test keeps the two name lists equal).
"""

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from behemoth.config.federate import FederateConfig
from behemoth.errors import BehemothError, ConfigError
from behemoth.federated.node_order import seed_round_draw
from behemoth.federated.privacy import PrivacyLedger

log = logging.getLogger("behemoth.federated")


class FederationStalled(BehemothError):
    """Rounds keep ending without a single usable update (every client failed or was rejected)."""


def weighted_means(rows: list[tuple[float, Mapping[str, Any]]], keys: Iterable[str]) -> dict[str, float]:
    """`keys` averaged over (weight, metrics) rows, weighted by examples; `num-examples` their sum."""
    total = sum(weight for weight, _ in rows)
    out: dict[str, float] = {"num-examples": int(total)}
    for key in keys:
        out[key] = sum(float(m[key]) * weight for weight, m in rows) / max(total, 1.0)
    return out


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Clients' training loss/accuracy averaged by examples; the examples summed."""
    rows = [next(iter(r.metric_records.values())) for r in records]
    return MetricRecord(
        weighted_means([(float(m[weight_key]), m) for m in rows], ("train-loss", "train-acc"))
    )


def count_empty_round(fed: FederateConfig, empty_rounds: int, r: int) -> int:
    """Round r ended without an aggregate: the new count of such rounds in a row, or FederationStalled once it
    reaches federate.max_empty_rounds."""
    empty_rounds += 1
    if empty_rounds >= fed.max_empty_rounds:
        raise FederationStalled(
            f"{empty_rounds} rounds in a row without a usable update (round {r}; "
            "federate.max_empty_rounds); see federate.log for why clients failed"
        )
    return empty_rounds


def dropout_picks(fed: FederateConfig, r: int, sampled: int) -> set[int]:
    """Which of round r's `sampled` clients are told to fail (federate.faults.dropout), by seed and round."""
    count = int(fed.faults.dropout * sampled + 0.5)
    return set(random.Random(f"dropout/{fed.seed}/{r}").sample(range(sampled), count)) if count else set()


def failure_line(reply: Message) -> str:
    """ "node N: reason" for a failed reply: the client's own exception message where Flower quotes one
    (after its traceback), else the reason's tail."""
    reason = " ".join(str(reply.error.reason).split())  # Ray's reasons span lines
    if "Message: " in reason:
        reason = reason.rsplit("Message: ", 1)[1].rstrip("'>")
    return f"node {reply.metadata.src_node_id}: {reason[-200:]}"


def log_failures(r: int, stats: "RoundStats") -> None:
    """A warning per round with failed clients (each reason on its own line) and per rejected update."""
    if stats.failed:
        log.warning(
            "round %d: %d of %d sampled clients failed; aggregating the %d that replied",
            r,
            len(stats.failed),
            stats.sampled,
            stats.replied - len(stats.rejected),
        )
        for line in stats.failed:
            log.info("round %d: failed %s", r, line)
    for line in stats.rejected:
        log.warning("round %d: rejected update from %s", r, line)


@dataclass(frozen=True)
class StrategyEntry:
    """One `federate.strategy`: a builder of Flower's strategy from the [federate] section, given the
    sampling keywords every strategy shares (sampling_options)."""

    name: str
    summary: str
    build: Callable[[FederateConfig, dict[str, Any]], Strategy]  # (section, sampling keywords) -> strategy


STRATEGY_REGISTRY: dict[str, StrategyEntry] = {
    entry.name: entry
    for entry in (
        StrategyEntry(
            "fedavg",
            "examples-weighted mean of the updates (McMahan et al. 2017)",
            lambda fed, common: FedAvg(**common),
        ),
        StrategyEntry(
            "fedprox",
            "FedAvg whose clients add a proximal term mu/2 |w - w_global|^2 (proximal_mu)",
            lambda fed, common: FedProx(**common, proximal_mu=fed.proximal_mu),
        ),
        StrategyEntry(
            "fedadam",
            "Adam on the server over the mean update (server_lr, server_betas, server_tau)",
            lambda fed, common: FedAdam(
                **common,
                eta=fed.server_lr,
                eta_l=1.0,
                beta_1=fed.server_betas[0],
                beta_2=fed.server_betas[1],
                tau=fed.server_tau,
            ),
        ),
        StrategyEntry(
            "fedmedian",
            "coordinate-wise median of the updates (robust)",
            lambda fed, common: FedMedian(**common),
        ),
        StrategyEntry(
            "fedtrimmedavg",
            "coordinate-wise mean without the trim_beta share at each end (robust)",
            lambda fed, common: FedTrimmedAvg(**common, beta=fed.trim_beta),
        ),
        StrategyEntry(
            "krum",
            "the update nearest its neighbours, tolerating krum_malicious clients (robust)",
            lambda fed, common: Krum(**common, num_malicious_nodes=fed.krum_malicious),
        ),
    )
}


def strategy_entry(name: str) -> StrategyEntry:
    """The registry entry for `name`; ConfigError naming the known strategies when there is none."""
    entry = STRATEGY_REGISTRY.get(name)
    if entry is None:
        known = ", ".join(STRATEGY_REGISTRY)
        raise ConfigError(f"federate.strategy = {name!r}: unknown strategy (known: {known})")
    return entry


def sampling_options(fed: FederateConfig) -> dict[str, Any]:
    """Keywords every Flower strategy takes: sample fraction C of the K clients (at least min_clients) once
    all K are connected, and average the clients' training metrics by examples."""
    return dict(
        fraction_train=fed.fraction,
        fraction_evaluate=fed.fraction_evaluate,
        min_train_nodes=fed.min_clients,
        min_evaluate_nodes=1 if fed.fraction_evaluate > 0 else 0,
        min_available_nodes=fed.clients,
        train_metrics_aggr_fn=aggregate_train_metrics,
    )


def base_strategy(fed: FederateConfig) -> Strategy:
    """Flower's strategy for federate.strategy, from the registry."""
    return strategy_entry(fed.strategy).build(fed, sampling_options(fed))


def build_strategy(fed: FederateConfig, ledger: PrivacyLedger, round_offset: int = 0) -> "GuardedStrategy":
    """Base strategy -> DP wrapper (dp.mode = 'server') -> guard."""
    inner = base_strategy(fed)
    if fed.dp.mode == "server":
        inner = DifferentialPrivacyServerSideFixedClipping(
            inner, ledger.noise, fed.dp.clip_norm, fed.sampled_clients
        )
    return GuardedStrategy(inner, fed, ledger, round_offset)


@dataclass
class RoundStats:
    """What happened in one round, as the guard saw it."""

    started: float = field(default_factory=time.perf_counter)
    sampled: int = 0
    replied: int = 0
    failed: list[str] = field(default_factory=list)  # "node N: reason"
    rejected: list[str] = field(default_factory=list)  # "partition P: reason"
    told_to_fail: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_full: int = 0  # sent + received had every message carried the full weights (adapters_only)
    aggregated: bool = False
    partitions: list[int] = field(default_factory=list)  # whose updates were averaged, in partition order
    train_metrics: dict[str, float] = field(default_factory=dict)
    client_eval: dict[str, float] = field(default_factory=dict)


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's records (arrays, metrics, configs), Flower's count_bytes; no transport
    overhead."""
    return sum(_record_bytes(record) for record in content.values())


def full_weight_bytes(content: RecordDict, full_arrays: int | None) -> int:
    """payload_bytes(content) had each of its ArrayRecords held the whole model (`full_arrays` bytes, as
    ArrayRecord.count_bytes counts them) instead of the adapters alone: what federate.adapters_only saved.
    `full_arrays` None: the arrays are the full weights already."""
    size = payload_bytes(content)
    if full_arrays is None:
        return size
    return size + sum(full_arrays - record.count_bytes() for record in content.array_records.values())


def _record_bytes(record: Any) -> int:
    """Flower's count_bytes fails on an empty list or string in a ConfigRecord (SecAgg+ sends "no dropped
    clients" as []): those count as their key."""
    empty = [k for k, v in record.items() if v in ([], b"", "")] if isinstance(record, ConfigRecord) else []
    if not empty:
        return record.count_bytes()
    rest = ConfigRecord({k: v for k, v in record.items() if k not in empty})
    return rest.count_bytes() + sum(len(k) for k in empty)


def in_dtypes(arrays: ArrayRecord | None, dtypes: Mapping[str, np.dtype]) -> ArrayRecord | None:
    """The aggregate in the global model's dtypes. FedOpt's NumPy arithmetic turns float32 into float64
    (a float64 scalar promotes), which a resumed run, reading the float32 model back, would not repeat."""
    if arrays is None or not dtypes:
        return arrays
    return ArrayRecord(
        {
            key: Array(array.numpy().astype(dtypes.get(key, array.numpy().dtype), copy=False))
            for key, array in arrays.items()
        }
    )


def partition_of(reply: Message) -> int:
    metrics = next(iter(reply.content.metric_records.values()))
    return int(metrics.get("partition-id", -1))


def non_finite(content: RecordDict) -> str | None:
    """The first array holding NaN or inf, if any."""
    for record in content.array_records.values():
        for key, array in record.items():
            values = array.numpy()
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                return key
    return None


class GuardedStrategy(Strategy):
    """Wraps `inner`: round numbering after resume, simulated dropouts, rejection of failed and non-finite
    replies, byte counts and per-round stats, then delegates everything else."""

    def __init__(
        self, inner: Strategy, fed: FederateConfig, ledger: PrivacyLedger, round_offset: int = 0
    ) -> None:
        self.inner, self.fed, self.ledger, self.offset = inner, fed, ledger, round_offset
        self.stats: dict[int, RoundStats] = {}
        self.dtypes: dict[str, np.dtype] = {}  # of the global arrays last sent
        self.empty_rounds = 0  # consecutive rounds without a usable update
        self.full_arrays: int | None = None  # the full weights' ArrayRecord bytes, when only adapters travel

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = server_round + self.offset
        stats = self.stats[r] = RoundStats()
        self.dtypes = {key: array.numpy().dtype for key, array in arrays.items()}
        seed_round_draw(self.fed.seed, r)
        messages = list(self.inner.configure_train(r, arrays, config, grid))
        messages = self._mark_dropouts(r, messages)
        stats.sampled = len(messages)
        stats.bytes_sent += sum(payload_bytes(m.content) for m in messages)
        stats.bytes_full += sum(full_weight_bytes(m.content, self.full_arrays) for m in messages)
        return messages

    def _mark_dropouts(self, r: int, messages: list[Message]) -> list[Message]:
        """Tell round(dropout * sampled) of the sampled clients, chosen by seed and round, to fail
        mid-round."""
        chosen = dropout_picks(self.fed, r, len(messages))
        if not chosen:
            return messages
        self.stats[r].told_to_fail = len(chosen)
        out = []
        for i, message in enumerate(messages):
            if i in chosen:
                content = RecordDict(dict(message.content.items()))  # messages share one RecordDict: copy
                config = ConfigRecord(dict(message.content["config"].items()))
                config["fail-after-steps"] = self.fed.faults.dropout_after_steps
                content["config"] = config
                message = Message(
                    content=content,
                    message_type=message.metadata.message_type,
                    dst_node_id=message.metadata.dst_node_id,
                )
            out.append(message)
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = server_round + self.offset
        stats = self.stats.setdefault(r, RoundStats())
        usable, replies = [], list(replies)
        stats.sampled = stats.sampled or len(replies)  # configure_train ran elsewhere (e.g. before a restart)
        for reply in replies:
            if reply.has_error():
                stats.failed.append(failure_line(reply))
                continue
            stats.bytes_received += payload_bytes(reply.content)
            stats.bytes_full += full_weight_bytes(reply.content, self.full_arrays)
            metrics = next(iter(reply.content.metric_records.values()))
            partition = partition_of(reply)
            if self.fed.dp.mode == "client":  # released to the server: counted whether accepted or not
                self.ledger.record_client(
                    partition, int(metrics["dp-steps"]), float(metrics["dp-sample-rate"])
                )
            bad = non_finite(reply.content)
            if bad is not None:
                stats.rejected.append(f"partition {partition}: non-finite values in {bad!r}")
                continue
            usable.append(reply)
        stats.replied = len(usable) + len(stats.rejected)
        log_failures(r, stats)
        if not usable:
            log.warning("round %d: no usable update; the global model stays as it was", r)
            self.empty_rounds = count_empty_round(self.fed, self.empty_rounds, r)
            return None, None
        self.empty_rounds = 0
        # in partition order, not arrival order: a float sum depends on its order, and a run must repeat
        usable.sort(key=partition_of)
        stats.partitions = [partition_of(reply) for reply in usable]
        arrays, metrics = self.inner.aggregate_train(r, usable)
        arrays = in_dtypes(arrays, self.dtypes)
        stats.aggregated = arrays is not None
        if stats.aggregated and self.fed.dp.mode == "server":
            self.ledger.releases += 1
        stats.train_metrics = {k: float(v) for k, v in (metrics or {}).items() if not isinstance(v, list)}
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = server_round + self.offset
        messages = list(self.inner.configure_evaluate(r, arrays, config, grid))
        if r in self.stats:
            self.stats[r].bytes_sent += sum(payload_bytes(m.content) for m in messages)
            self.stats[r].bytes_full += sum(full_weight_bytes(m.content, self.full_arrays) for m in messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        r = server_round + self.offset
        replies = [reply for reply in replies if not reply.has_error()]
        if r in self.stats:
            self.stats[r].bytes_received += sum(payload_bytes(reply.content) for reply in replies)
            self.stats[r].bytes_full += sum(full_weight_bytes(m.content, self.full_arrays) for m in replies)
        metrics = self.inner.aggregate_evaluate(r, replies)
        if metrics is not None and r in self.stats:
            self.stats[r].client_eval = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
        return metrics


def innermost(strategy: Strategy) -> Strategy:
    """The Flower strategy under any wrappers (guard, DP), where optimiser state such as FedAdam's lives."""
    while True:
        nested = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
        if nested is None:
            return strategy
        strategy = nested
