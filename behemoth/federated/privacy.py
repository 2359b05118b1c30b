"""Differential privacy: Opacus' RDP accountant for (epsilon, delta), and DP-SGD inside behemoth's loop.

Client mode (DP-SGD): the client's model is wrapped in Opacus' GradSampleModule (per-sample gradients),
a hook swaps the loop's optimizer for Opacus' DPOptimizer (clip each sample's gradient, add Gaussian
noise), and a Poisson feed draws every batch as Opacus' analysis assumes. The loop itself is unchanged.

Server mode: Flower's DifferentialPrivacyServerSideFixedClipping does the clipping and noise; here we
only count it. Flower's own accountant needs Google's dp-accounting (not installed), so both modes are
counted with Opacus' RDP accountant.

Threat model of client DP. DP-SGD protects each row of a client's partition from whoever sees the client's
updates, the server included: (epsilon, delta) bounds how much any one row can change what leaves the
client. That holds only while the noise and the Poisson draws are secret, so they come from `secure_seed`
(os.urandom, fresh per client per round) and never from anything the server knows or sends (its config,
seed or round number), and DPOptimizer runs in Opacus' secure_mode (noise robust to floating-point
attacks). Epsilon is per client, over its own records; it says nothing about what the model learns of a
client's data as a whole, and a server that runs more rounds than the client's config planned spends more
than federate.dp.target_epsilon.
"""

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from behemoth.data.bundle import TensorSplit
from behemoth.data.randomness import step_generator
from behemoth.errors import ConfigError
from behemoth.training.feed import BatchTransform, MicroBatch
from behemoth.training.hooks import BaseHook


def secure_seed() -> int:
    """63 bits from the operating system's CSPRNG: the seed of one client round's DP noise or Poisson draws,
    which no one else (the server least) can know or reproduce."""
    return int.from_bytes(os.urandom(8), "big") >> 1


def keyed_generator(seed: int, *position: int) -> torch.Generator:
    """A generator for (seed, position...), keyed by 64 bits of BLAKE2b: a 63-bit secret seed keeps its
    strength (a CRC-32 key, as batch transforms use, would leave 2**32 candidates)."""
    key = hashlib.blake2b("/".join(map(str, (seed, *position))).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "big") >> 1)


def rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at `delta` after the Gaussian steps in `history`: [(noise_multiplier, sample_rate, steps)]."""
    from opacus.accountants import RDPAccountant

    if not history or all(steps == 0 for _, _, steps in history):
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [entry for entry in history if entry[2] > 0]
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier that keeps `steps` Gaussian steps at `sample_rate` within epsilon."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
        )
    )


@dataclass(frozen=True)
class DPSGDPlan:
    """One client's DP-SGD schedule: Poisson rate q = B / n and about 1 / q steps per epoch."""

    sample_rate: float
    steps_per_epoch: int

    @classmethod
    def for_partition(cls, rows: int, batch: int) -> "DPSGDPlan":
        batch = min(batch or rows, rows)  # B = 0 (inf): the whole partition in expectation
        return cls(batch / rows, max(1, round(rows / batch)))


class PrivacyLedger:
    """What the server knows was released: per client (partition), the DP-SGD steps behind its updates.

    A client's update costs privacy once it reaches the server, accepted or not; a client that failed
    before replying released nothing. Epsilon is the worst client's.
    """

    def __init__(self, mode: str, noise_multiplier: float, delta: float) -> None:
        self.mode, self.noise, self.delta = mode, noise_multiplier, delta
        self.steps: dict[int, int] = {}  # partition -> DP-SGD steps released (client mode)
        self.rates: dict[int, float] = {}  # partition -> its Poisson sample rate
        self.releases = 0  # noised aggregates published (server mode)

    def record_client(self, partition: int, steps: int, sample_rate: float) -> None:
        self.steps[partition] = self.steps.get(partition, 0) + steps
        self.rates[partition] = sample_rate

    def epsilon(self) -> float:
        if self.mode == "client":
            return max(
                (rdp_epsilon([(self.noise, self.rates[p], s)], self.delta) for p, s in self.steps.items()),
                default=0.0,
            )
        if self.mode == "server":
            # each release is one Gaussian mechanism on the clipped average; sampling amplification is not
            # claimed (Flower samples a fixed number of clients, not Poisson), as Flower's own accountant does
            return rdp_epsilon([(self.noise, 1.0, self.releases)], self.delta)
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": {str(k): v for k, v in self.steps.items()},
            "rates": {str(k): v for k, v in self.rates.items()},
            "releases": self.releases,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = {int(k): int(v) for k, v in state["steps"].items()}
        self.rates = {int(k): float(v) for k, v in state["rates"].items()}
        self.releases = int(state["releases"])


def private_module(model: nn.Module) -> nn.Module:
    """Opacus' GradSampleModule around `model` (per-sample gradients); refuses layers DP-SGD cannot use."""
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(
            f"federate.dp.mode = 'client': the model has layers DP-SGD cannot train "
            f"({errors[0]}); e.g. use model.norm = 'none'"
        )
    return GradSampleModule(model, loss_reduction="mean")


class DPSGDHook(BaseHook):
    """Swaps the loop's optimizer for Opacus' DPOptimizer at the start of training.

    DPOptimizer shares the wrapped optimizer's param_groups, so the loop's schedule keeps driving the lr.
    `seed` must be secret (secure_seed): whoever knows it can regenerate the noise and subtract it.
    """

    def __init__(self, noise_multiplier: float, clip_norm: float, expected_batch: int, seed: int) -> None:
        self.noise, self.clip, self.expected_batch, self.seed = (
            noise_multiplier,
            clip_norm,
            expected_batch,
            seed,
        )

    def on_train_start(self, ctx: Any) -> None:
        from opacus.optimizers import DPOptimizer

        generator = torch.Generator(device=ctx.device).manual_seed(self.seed)
        ctx.optimizer = DPOptimizer(
            ctx.optimizer,
            noise_multiplier=self.noise,
            max_grad_norm=self.clip,
            expected_batch_size=self.expected_batch,
            loss_reduction="mean",
            generator=generator,
            secure_mode=True,  # each draw the sum of several Gaussians: no floating-point attack
        )


class PoissonFeed:
    """Batches drawn as DP-SGD's analysis assumes: each row joins a step's batch with probability q.

    A pure function of (seed, epoch, step), like TensorFeed, so it plugs into the loop as a `Feed`; with a
    secret seed (secure_seed) the server cannot tell which rows a step used.
    An empty draw takes no step (the loop cannot average over zero rows); the accountant still counts it,
    which can only over-state epsilon.
    """

    def __init__(
        self,
        split: TensorSplit,
        plan: DPSGDPlan,
        seed: int,
        device: torch.device,
        transform: BatchTransform | None = None,
    ) -> None:
        self.split, self.plan, self.seed, self.device, self.transform = split, plan, seed, device, transform
        self.steps_per_epoch = plan.steps_per_epoch

    def draw(self, epoch: int, step: int) -> torch.Tensor:
        coins = torch.rand(len(self.split), generator=keyed_generator(self.seed, epoch, step))
        return torch.nonzero(coins < self.plan.sample_rate).squeeze(1)  # (~q * n,) row indices

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[int, list[MicroBatch]]]:
        pending: tuple[int, torch.Tensor] | None = None
        for step in range(start_step, self.steps_per_epoch):
            rows = self.draw(epoch, step)
            if len(rows) == 0:
                continue
            if pending is not None:
                yield pending[0], [self._batch(epoch, *pending)]
            pending = (step, rows)
        if pending is None:
            raise ConfigError(
                f"DP-SGD drew no rows in a whole epoch (sample rate {self.plan.sample_rate:.3g} "
                f"of {len(self.split)} rows): raise federate.local_batch"
            )
        # the last non-empty draw closes the epoch: the loop counts an epoch done at steps_per_epoch
        yield self.steps_per_epoch - 1, [self._batch(epoch, *pending)]

    def _batch(self, epoch: int, step: int, rows: torch.Tensor) -> MicroBatch:
        x, y = self.split.x[rows].to(self.device), self.split.y[rows].to(self.device)
        if self.transform is not None:  # data.augment, per sample (mixing ops are refused under DP)
            x, y = self.transform(x, y, step_generator(self.seed, epoch, step, 1, 0))
        return MicroBatch(x, y, 1.0)


def noise_multiplier_for(fed, partition_sizes: list[int]) -> float:
    """The noise multiplier the run uses ([federate] section `fed`): dp.noise_multiplier, or, with
    dp.target_epsilon, the smallest noise that keeps the worst client within it over all rounds
    (as if every client took part in every round)."""
    dp = fed.dp
    if dp.mode == "off":
        return 0.0
    if dp.target_epsilon is None:
        return dp.noise_multiplier
    if dp.mode == "server":
        return noise_for_epsilon(dp.target_epsilon, dp.delta, 1.0, fed.rounds)
    plans = {DPSGDPlan.for_partition(rows, fed.local_batch) for rows in set(partition_sizes)}
    return max(
        noise_for_epsilon(
            dp.target_epsilon,
            dp.delta,
            plan.sample_rate,
            fed.rounds * fed.local_epochs * plan.steps_per_epoch,
        )
        for plan in plans
    )
