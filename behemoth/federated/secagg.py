"""The server side of `federate.secagg = true`: SecAgg+ (Bell et al. 2020), so the server learns only the
sum of the sampled clients' masked updates, never one of them.

Flower 1.41 runs SecAgg+ only in its legacy server API: `SecAggPlusWorkflow` as the training step of a
`DefaultWorkflow`, driving a legacy strategy held in a `LegacyContext`. The pieces here fit behemoth's
server into that shape, reusing the normal path's setup, recorder, checkpoints and summary
(server_run.py):

- SecAggStrategy wraps Flower's legacy FedAvg as GuardedStrategy wraps the message strategies: rounds
  numbered after a resume, simulated dropouts, per-round stats, and RoundRecorder behind the legacy
  `evaluate(round, parameters)`.
- Clients send their update (local - global), not their weights: SecAgg+ clips every value to
  [-8, 8] and quantizes it to 22 bits, which an update fits far better than a weight; the strategy adds
  the unmasked weighted mean update to the global model.
- WatchedGrid sees the protocol's messages (keys, shares, masked vectors), which the workflow sends out
  of the strategy's sight: it counts their bytes and the clients that failed.
"""

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_evaluate_workflow
from flwr.serverapp import Grid

from behemoth.config import RunConfig
from behemoth.config.federate import FederateConfig
from behemoth.federated.exchange import named_arrays, to_arrays
from behemoth.federated.metrics import TargetReached, log
from behemoth.federated.privacy import PrivacyLedger
from behemoth.federated.server_run import announce, checkpointer, finish, prepare, shared_config
from behemoth.federated.strategies import (
    RoundStats,
    count_empty_round,
    dropout_picks,
    failure_line,
    log_failures,
    payload_bytes,
    weighted_means,
)


def workflow_shares(fed: FederateConfig) -> tuple[int | float, int | float]:
    """secagg_shares and secagg_threshold as SecAggPlusWorkflow takes them: an int share count must be above
    2 and an int threshold below the share count, while a float means "this share of them" (1.0: all)."""
    shares = 1.0 if fed.secagg_shares == fed.sampled_clients else fed.secagg_shares
    threshold = 1.0 if fed.secagg_threshold == fed.secagg_shares else fed.secagg_threshold
    return shares, threshold


class SecAggStrategy(Strategy):
    """Flower's legacy FedAvg (`inner`) over masked updates, with the guard's bookkeeping.

    DefaultWorkflow has no early stop, and the thread it keeps the node list with ends only when it
    returns: an exception from the evaluation (target reached, simulated crash, stalled federation) is
    held in `stopped`, the remaining rounds do nothing, and serve_secagg acts on it afterwards.
    """

    def __init__(
        self,
        inner: FedAvg,
        fed: FederateConfig,
        ledger: PrivacyLedger,
        keys: list[str],
        round_offset: int = 0,
    ) -> None:
        self.inner, self.fed, self.ledger, self.keys, self.offset = inner, fed, ledger, keys, round_offset
        self.stats: dict[int, RoundStats] = {}
        self.current: int | None = None  # the round in progress, whose stats WatchedGrid adds to
        self.on_evaluate: Callable[[int, ArrayRecord], MetricRecord | None] | None = None  # RoundRecorder
        self.stopped: Exception | None = None
        self.empty_rounds = 0  # consecutive rounds without an aggregate
        self._global: list[np.ndarray] = []  # the round's starting weights, which the mean update moves

    def __repr__(self) -> str:
        return f"SecAggStrategy({self.inner!r})"

    def round_stats(self) -> RoundStats | None:
        return self.stats.get(self.current) if self.current is not None else None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        r = self.current = server_round + self.offset
        stats = self.stats[r] = RoundStats()
        self._global = parameters_to_ndarrays(parameters)
        instructions = self.inner.configure_fit(r, parameters, client_manager)
        chosen = dropout_picks(self.fed, r, len(instructions))
        stats.sampled, stats.told_to_fail = len(instructions), len(chosen)
        fail = {"fail-after-steps": self.fed.faults.dropout_after_steps}
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, **fail}) if i in chosen else ins)
            for i, (proxy, ins) in enumerate(instructions)
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Any]]:
        """`results` all carry the same unmasked weighted mean update (the workflow puts it in each FitRes);
        their metrics came in the clear."""
        r = server_round + self.offset
        stats = self.stats.setdefault(r, RoundStats())
        stats.replied = len(results)
        if self.fed.dp.mode == "client":  # every masked update released DP-SGD steps of its client
            for _, res in results:
                self.ledger.record_client(
                    int(res.metrics["partition-id"]),
                    int(res.metrics["dp-steps"]),
                    float(res.metrics["dp-sample-rate"]),
                )
        mean, metrics = self.inner.aggregate_fit(r, results, failures)
        if mean is None:
            return None, {}
        moved = [_add(g, d) for g, d in zip(self._global, parameters_to_ndarrays(mean), strict=True)]
        stats.aggregated = True
        stats.train_metrics = {k: float(v) for k, v in metrics.items() if k.startswith("train-")}
        return ndarrays_to_parameters(moved), metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list:
        return self.inner.configure_evaluate(server_round + self.offset, parameters, client_manager)

    def aggregate_evaluate(
        self, server_round: int, results: list, failures: list
    ) -> tuple[float | None, dict]:
        r = server_round + self.offset
        loss, metrics = self.inner.aggregate_evaluate(r, results, failures)
        if r in self.stats and metrics:
            self.stats[r].client_eval = {k: float(v) for k, v in metrics.items() if k != "num-examples"}
        return loss, metrics

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Any]] | None:
        """The adapter: RoundRecorder on the global weights, keyed like the state_dict."""
        if self.stopped is not None or self.on_evaluate is None:
            return None
        try:
            self._close_round(server_round + self.offset)
            metrics = self.on_evaluate(
                server_round, named_arrays(self.keys, parameters_to_ndarrays(parameters))
            )
        except Exception as stop:  # held, see the class docstring
            self.stopped = stop
            return None
        finally:
            self.current = None
        return (
            None
            if metrics is None
            else (float(metrics["test-loss"]), {"test-acc": float(metrics["test-acc"])})
        )

    def _close_round(self, r: int) -> None:
        stats = self.stats.get(r)
        if r == 0 or stats is None:
            return
        log_failures(r, stats)
        if stats.aggregated:
            self.empty_rounds = 0
            return
        log.warning(
            "round %d: SecAgg+ ended without a sum (fewer than secagg_threshold = %d clients left); "
            "the global model stays as it was",
            r,
            self.fed.secagg_threshold,
        )
        self.empty_rounds = count_empty_round(self.fed, self.empty_rounds, r)


def _add(weights: np.ndarray, update: np.ndarray) -> np.ndarray:
    """weights + update in the weights' dtype (an integer buffer rounds)."""
    moved = weights + update
    return (np.rint(moved) if weights.dtype.kind in "iu" else moved).astype(weights.dtype)


class WatchedGrid(Grid):
    """A Grid adding every message's payload bytes, and every failed training reply, to the round in
    progress (`current()`); all else is the wrapped Grid's."""

    def __init__(self, grid: Grid, current: Callable[[], RoundStats | None]) -> None:
        self.grid, self.current = grid, current

    def set_run(self, run: Any) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        stats = self.current()
        if stats is not None:  # counted before sending: the grid may consume the contents
            stats.bytes_sent += sum(payload_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        if stats is not None:
            for reply in replies:
                if not reply.has_error():
                    stats.bytes_received += payload_bytes(reply.content)
                elif (
                    reply.metadata.message_type == MessageType.TRAIN
                ):  # every SecAgg+ stage is a train message
                    stats.failed.append(failure_line(reply))
        return replies


def serve_secagg(grid: Grid, cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """server_app.serve with SecAgg+: the same setup, records, checkpoints and summary; FedAvg only."""
    fed = cfg.federate
    parts = prepare(cfg, run_dir, resume)
    arrays = to_arrays(parts.model, fed.adapters_only)
    shared = shared_config(cfg, parts.ledger)

    def round_config(r: int) -> dict[str, Any]:
        return {**shared, "server-round": r}

    inner = FedAvg(
        fraction_fit=fed.fraction,
        fraction_evaluate=fed.fraction_evaluate,
        min_fit_clients=fed.min_clients,
        min_evaluate_clients=1,
        min_available_clients=fed.clients,
        on_fit_config_fn=round_config,
        on_evaluate_config_fn=round_config,
        initial_parameters=ndarrays_to_parameters(arrays.to_numpy_ndarrays()),
        fit_metrics_aggregation_fn=lambda rows: weighted_means(rows, ("train-loss", "train-acc")),
        evaluate_metrics_aggregation_fn=lambda rows: weighted_means(rows, ("local-loss", "local-acc")),
    )
    strategy = SecAggStrategy(inner, fed, parts.ledger, list(arrays.keys()), round_offset=parts.start)
    if parts.saved is not None:
        log.info(
            "resuming after round %d of %d (SecAgg+, FedAvg: no strategy state)", parts.start, fed.rounds
        )
    strategy.on_evaluate = parts.recorder(
        cfg, run_dir, strategy, checkpointer(run_dir, parts.ledger, dict), tags={"secagg": True}
    )
    shares, threshold = workflow_shares(fed)
    # max_weight: the largest partition, so every client's weight ratio is <= 1 and its update keeps the
    # quantizer's full range (Flower's default, 1000 rows, would waste bits on small partitions)
    secagg = SecAggPlusWorkflow(shares, threshold, max_weight=float(max(parts.sizes)), timeout=fed.timeout)

    def train_then_evaluate(round_grid: Grid, context: Context) -> None:
        """A round: SecAgg+ training, then the clients' own evaluation (Strategy.start's order), so the
        round's record, written by the centralized evaluation after this, holds both."""
        if strategy.stopped is None:
            secagg(round_grid, context)
            default_evaluate_workflow(round_grid, context)

    workflow = DefaultWorkflow(fit_workflow=train_then_evaluate, evaluate_workflow=lambda *_: None)
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=fed.rounds - parts.start, round_timeout=fed.timeout),
        strategy=strategy,
        client_manager=SimpleClientManager(),
    )
    announce(cfg, parts)
    workflow(WatchedGrid(grid, strategy.round_stats), context)
    if strategy.stopped is not None and not isinstance(strategy.stopped, TargetReached):
        raise strategy.stopped
    return finish(run_dir, parts.model, cfg, "target" if strategy.stopped is not None else "rounds")
