"""The ClientApp for `federate.secagg = true`: Flower's `secaggplus_mod` around a NumPyClient.

SecAgg+ lives in Flower's legacy client API: the mod answers the protocol's key-exchange and unmasking
stages itself and, in the masking stage, calls the client's `fit` and masks the FitRes it returns, so the
update leaves the node only as a masked integer vector. `fit` runs `train_round`, the very round the
message ClientApp runs (partition, seeds, DP-SGD, simulated faults), and returns the update
(local - global) instead of the weights; secagg.py says why. The FitRes metrics (examples, training
loss, DP bookkeeping) still travel in the clear, as they do without SecAgg+.

Deployed, a SuperNode starts a fresh app process for each of the protocol's four messages per round, so
this module imports torch and behemoth's training only where a stage trains or evaluates.
"""

import numpy as np
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

Scalars = dict[str, bool | bytes | float | int | str]


class NonFiniteUpdate(RuntimeError):
    """A client withholds an update holding NaN/inf: inside the masked sum the server could not reject it,
    so the node drops out of the round instead (SecAgg+ recovers the sum of the others)."""


class SecAggClient(NumPyClient):
    """One node's training and local evaluation in Flower's legacy list-of-arrays format (state_dict
    order)."""

    def __init__(self, context: Context) -> None:
        self.node = context

    def fit(self, parameters: list[np.ndarray], config: Scalars) -> tuple[list[np.ndarray], int, Scalars]:
        from behemoth.federated.client_app import train_round  # torch: only the masking stage trains

        update = train_round(config, self.node, parameters)
        delta = {
            k: (update.weights[k] - start).numpy() for k, start in update.start.items()
        }  # state_dict order
        bad = next((k for k, d in delta.items() if d.dtype.kind == "f" and not np.isfinite(d).all()), None)
        if bad is not None:
            raise NonFiniteUpdate(
                f"partition {update.metrics['partition-id']}: non-finite values in {bad!r}; "
                "the update is withheld from the masked sum"
            )
        np.random.seed(
            update.seed
        )  # secaggplus_mod rounds stochastically with NumPy's global RNG: same run, same sum
        return list(delta.values()), int(update.metrics["num-examples"]), dict(update.metrics)

    def evaluate(self, parameters: list[np.ndarray], config: Scalars) -> tuple[float, int, Scalars]:
        from behemoth.federated.client_app import evaluate_round

        metrics = evaluate_round(config, self.node, parameters)
        return float(metrics["local-loss"]), int(metrics["num-examples"]), dict(metrics)


def client_fn(context: Context) -> Client:
    return SecAggClient(context).to_client()


app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
