"""Client sampling that a seed repeats, across runs and across a resume.

Flower's strategies sample a round's clients with `random.sample(list(grid.get_node_ids()), n)`. Two things
made that draw differ between runs of one seed when federate.fraction < 1:
- the node ids are random 64-bit numbers the SuperLink draws from os.urandom in every run, and come back as
  a set: `PartitionOrderedGrid` lists them in partition order instead, asking each node it has not seen
  yet, once, which partition it holds (a query message that client_app.py answers from the node's own
  config). A node that does not answer sorts after those that did (by id); a claimed partition only
  orders the draw, it grants nothing;
- Flower itself draws from the global `random` while it waits for messages (retry jitter), as often as the
  timing makes it: `seed_round_draw` seeds `random` from (federate.seed, round) right before each draw, so
  round r samples the same partitions whatever ran before it, a resumed run included.
"""

import logging
import random
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from behemoth.config.federate import FederateConfig

log = logging.getLogger("behemoth.federated")
PARTITION_KEY = "partition-id"  # the query reply's one metric
UNANSWERED = float("inf")


def draw_needs_order(fed: FederateConfig) -> bool:
    """Whether node order decides anything: a round that samples every node trains them all and its
    updates are averaged in partition order anyway (strategies.py), unless simulated dropouts pick some by
    their place in the draw. Asking costs a message per node (a process start per node when deployed)."""
    return fed.sampled_clients < fed.clients or fed.faults.dropout > 0


class PartitionOrderedGrid:
    """`grid`, except that get_node_ids lists the nodes in partition order (asking new nodes theirs)."""

    def __init__(self, grid: Grid, timeout: float | None = None) -> None:
        self.grid, self.timeout = grid, timeout
        self.partitions: dict[int, float] = {}  # node id -> its partition (UNANSWERED if it did not say)

    def __getattr__(self, name: str) -> Any:  # everything else is the wrapped grid's
        return getattr(self.grid, name)

    def get_node_ids(self) -> list[int]:
        nodes = list(self.grid.get_node_ids())
        unseen = [node for node in nodes if node not in self.partitions]
        if unseen:  # the query's own message traffic may draw from `random`: the round's draw must not see it
            state = random.getstate()
            self.partitions.update(ask_partitions(self.grid, unseen, self.timeout))
            random.setstate(state)
        return sorted(nodes, key=lambda node: (self.partitions[node], node))


def ask_partitions(grid: Grid, nodes: Iterable[int], timeout: float | None) -> dict[int, float]:
    """Each node's answer to the partition query; UNANSWERED for an error, no reply or a malformed one."""
    nodes = list(nodes)
    questions = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    answers = dict.fromkeys(nodes, UNANSWERED)
    for reply in grid.send_and_receive(questions, timeout=timeout):
        node = reply.metadata.src_node_id
        if node in answers and not reply.has_error():
            record = reply.content.metric_records.get("node")
            value = record.get(PARTITION_KEY) if record is not None else None
            if isinstance(value, int) and not isinstance(value, bool):
                answers[node] = value
    silent = sum(1 for value in answers.values() if value == UNANSWERED)
    if silent:
        log.warning(
            "%d of %d nodes did not say their partition: they are sampled after the rest", silent, len(nodes)
        )
    return answers


def seed_round_draw(seed: int, server_round: int) -> None:
    """Seed the global `random`, which Flower's strategies sample with, for round `server_round`'s draw."""
    random.seed(f"sample/{seed}/{server_round}")
