"""The ClientApp for `federate.secagg = true`: Flower's `secaggplus_mod` around a NumPyClient.

SecAgg+ lives in Flower's legacy client API: the mod answers the protocol's key-exchange and unmasking
stages itself and, in the masking stage, calls the client's `fit` and masks the FitRes it returns, so the
update leaves the node only as a masked integer vector. `fit` runs `train_round`, the very round the
message ClientApp runs (partition, seeds, DP-SGD, simulated faults), and returns the update
(local - global) instead of the weights; secagg.py says why. The FitRes metrics (examples, training
loss, DP bookkeeping) still travel in the clear, as they do without SecAgg+.

The trust boundary is client_app.py's: the client's own config (bound in simulation, named by the node
config when deployed), the round settings checked against RoundSettings, the arrays against its own model;
`refuse_unexpected_records` refuses any record outside the protocol's before the mod reads the message.

Deployed, a SuperNode starts a fresh app process for each of the protocol's four messages per round, so
this module imports torch and behemoth's training only where a stage trains or evaluates.
"""

import logging
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from behemoth.config import RunConfig
from behemoth.config.federate import RefusedMessage, parse_round_settings

Scalars = dict[str, bool | bytes | float | int | str]
log = logging.getLogger("behemoth.federated")

# what SecAgg+'s messages hold: the protocol's config, and (masking stage) the legacy FitIns; evaluation is
# a plain legacy EvaluateIns
SECAGG_RECORDS = {
    MessageType.TRAIN: {"secaggplus_configs", "fitins.parameters", "fitins.config"},
    MessageType.EVALUATE: {"evaluateins.parameters", "evaluateins.config"},
}


class NonFiniteUpdate(RuntimeError):
    """A client withholds an update holding NaN/inf: inside the masked sum the server could not reject it,
    so the node drops out of the round instead (SecAgg+ recovers the sum of the others)."""


def refuse_unexpected_records(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A mod ahead of secaggplus_mod: a message holding any record outside SECAGG_RECORDS is refused."""
    allowed = SECAGG_RECORDS.get(msg.metadata.message_type, set())
    unexpected = sorted(set(msg.content.keys()) - allowed)
    if unexpected:
        refused = RefusedMessage(f"the server sent a record {unexpected[0]!r}, which SecAgg+ does not use")
        log.warning(
            "partition %s refused the server's message: %s", context.node_config.get("partition-id"), refused
        )
        raise refused
    return call_next(msg, context)


class SecAggClient(NumPyClient):
    """One node's training and local evaluation in Flower's legacy list-of-arrays format (state_dict
    order), under the client's own config (`bound` in simulation; None: the node config names it)."""

    def __init__(self, context: Context, bound: RunConfig | None = None) -> None:
        self.node, self.bound = context, bound

    def fit(self, parameters: list[np.ndarray], config: Scalars) -> tuple[list[np.ndarray], int, Scalars]:
        from behemoth.federated.client_app import log_refusal, own_config, train_round  # torch: only here

        try:
            settings = parse_round_settings(config)
            update = train_round(own_config(self.node, self.bound), settings, self.node, parameters)
        except RefusedMessage as refused:
            log_refusal(self.node, "fit instruction", refused)
            raise
        delta = {
            k: (update.weights[k] - start).numpy() for k, start in update.start.items()
        }  # state_dict order
        bad = next((k for k, d in delta.items() if d.dtype.kind == "f" and not np.isfinite(d).all()), None)
        if bad is not None:
            raise NonFiniteUpdate(
                f"partition {update.metrics['partition-id']}: non-finite values in {bad!r}; "
                "the update is withheld from the masked sum"
            )
        # secaggplus_mod rounds stochastically with NumPy's global RNG: same run, same sum (without DP; with
        # DP the round's seed came from os.urandom)
        np.random.seed(update.seed % 2**32)
        return list(delta.values()), int(update.metrics["num-examples"]), dict(update.metrics)

    def evaluate(self, parameters: list[np.ndarray], config: Scalars) -> tuple[float, int, Scalars]:
        from behemoth.federated.client_app import evaluate_round, log_refusal, own_config

        try:
            settings = parse_round_settings(config)
            metrics = evaluate_round(own_config(self.node, self.bound), settings, self.node, parameters)
        except RefusedMessage as refused:
            log_refusal(self.node, "evaluate instruction", refused)
            raise
        return float(metrics["local-loss"]), int(metrics["num-examples"]), dict(metrics)


@dataclass(frozen=True)
class ClientFactory:
    """Flower's `client_fn(context)`, holding the client's own config (None when deployed)."""

    bound: RunConfig | None = None

    def __call__(self, context: Context) -> Client:
        return SecAggClient(context, self.bound).to_client()


def make_secagg_app(bound: RunConfig | None = None) -> ClientApp:
    """The SecAgg+ ClientApp: `bound` is the client's own config in simulation; None in deployment."""
    return ClientApp(client_fn=ClientFactory(bound), mods=[refuse_unexpected_records, secaggplus_mod])


app = make_secagg_app()  # deployment: each SuperNode's own config, named by its node config
