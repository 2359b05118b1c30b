"""One client's local update, through behemoth's training engine (`behemoth.training.train`): the same
optimizers, schedules, precision and clipping as `behemoth train`, for E epochs of batch B on the
client's partition. No Flower here: client_app.py adapts this to messages.

FedProx enters as a `loss_fn` (task loss + mu/2 ||w - w_global||^2), DP-SGD as a feed + hook
(privacy.py), simulated failures as a hook; the loop itself is untouched.

Randomness: without DP a round is a pure function of its `seed` (bitwise reproducible runs); with DP-SGD
every draw (Poisson batches, noise, anything else the round samples) comes from fresh os.urandom seeds,
whatever `seed` says, so nobody who knows the run's seed can replay the noise.
"""

from dataclasses import dataclass

import torch
from torch import nn

from behemoth.config import CheckpointConfig, EarlyStopConfig, RunConfig
from behemoth.data.augment.for_data import augment_for
from behemoth.data.bundle import DataBundle, TensorSplit
from behemoth.errors import ConfigError
from behemoth.federated.privacy import DPSGDHook, DPSGDPlan, PoissonFeed, private_module, secure_seed
from behemoth.spec import DataSpec
from behemoth.training import BaseHook, resolve_device, task_loss, train
from behemoth.training.assembly import build_feed
from behemoth.training.loop import LossFn


class SimulatedClientFailure(RuntimeError):
    """Raised mid-round by a client told to fail (federate.faults.dropout)."""


@dataclass
class LocalResult:
    weights: dict[str, torch.Tensor]  # the updated state_dict
    examples: int  # rows in the partition (FedAvg's weight)
    loss: float  # mean training loss over the local steps
    acc: float
    steps: int  # optimizer steps taken
    dp_steps: int = 0  # steps the privacy accountant counts (client DP)
    sample_rate: float = 0.0  # DP-SGD's Poisson rate


class StepStats(BaseHook):
    """Mean training loss and accuracy over the local steps (the loop logs them per step)."""

    def __init__(self) -> None:
        self.loss = self.acc = 0.0
        self.count = 0

    def on_step_end(self, ctx, metrics: dict[str, float]) -> None:
        self.loss += metrics["train.loss"]
        self.acc += metrics["train.acc"]
        self.count += 1


class FailAfter(BaseHook):
    """Raise after `steps` optimizer steps (0: before the first), like a client that crashes or leaves."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_start(self, ctx) -> None:
        if self.steps == 0:
            raise SimulatedClientFailure("simulated client failure before local training")

    def on_step_end(self, ctx, metrics: dict[str, float]) -> None:
        if ctx.step >= self.steps:
            raise SimulatedClientFailure(f"simulated client failure after {ctx.step} local steps")


def proximal_loss(model: nn.Module, mu: float, label_smoothing: float) -> LossFn:
    """FedProx (Li et al. 2020): the task loss + mu/2 * ||w - w_global||^2, anchored at the weights the
    model holds now (the global model just received)."""
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params]

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        drift = sum((p - a).pow(2).sum() for p, a in zip(params, anchors))
        return task_loss(logits, targets, label_smoothing) + 0.5 * mu * drift

    return loss_fn


def check_private_augment(cfg: RunConfig) -> None:
    """DP-SGD bounds each row's influence on a step; mixup and cutmix blend rows, which that bound cannot
    cover."""
    mixing = [op for op in ("mixup", "cutmix") if op in cfg.data.augment.active()]
    if mixing:
        raise ConfigError(
            f"data.augment.{mixing[0]}: not with federate.dp.mode = 'client' (DP-SGD clips each "
            "sample's gradient; a mixed sample carries two rows)"
        )


def local_train(
    model: nn.Module,
    split: TensorSplit,
    spec: DataSpec,
    cfg: RunConfig,
    seed: int,
    *,
    proximal_mu: float = 0.0,
    noise_multiplier: float | None = None,
    fail_after: int | None = None,
) -> LocalResult:
    """Train `model` (holding the global weights) on `split` for federate.local_epochs; return its update.

    `noise_multiplier` switches on DP-SGD (federate.dp.mode = 'client'), and then `seed` is not used (see
    the module's docstring); `fail_after` simulates a dropout.
    """
    fed = cfg.federate
    if noise_multiplier is not None:
        seed = secure_seed()
    batch = min(fed.local_batch or len(split), len(split))  # B = 0 means the whole partition (B = inf)
    train_cfg = cfg.train.model_copy(
        update={
            "epochs": fed.local_epochs,
            "seed": seed,
            "early_stop": EarlyStopConfig(),
            "checkpoint": CheckpointConfig(),
            "eval_every_steps": None,
        }
    )
    stats = StepStats()
    hooks: list = [stats] + ([FailAfter(fail_after)] if fail_after is not None else [])
    torch.manual_seed(seed)
    data = DataBundle(name="partition", spec=spec, train=split)
    trainee, plan = model, None
    if noise_multiplier is None:  # [data.sampling] and [data.augment] as in `behemoth train`
        feed = build_feed(cfg, data, batch_size=batch, seed=seed)
    else:
        check_private_augment(cfg)
        plan = DPSGDPlan.for_partition(len(split), batch)
        trainee = private_module(model)  # same parameters, per-sample gradients
        feed = PoissonFeed(
            split, plan, secure_seed(), resolve_device(train_cfg.device), augment_for(cfg.data.augment, data)
        )
        hooks.append(
            DPSGDHook(noise_multiplier, fed.dp.clip_norm, round(plan.sample_rate * len(split)), secure_seed())
        )
    loss_fn = proximal_loss(model, proximal_mu, train_cfg.label_smoothing) if proximal_mu > 0 else None
    result = train(trainee, data, train_cfg, batch, hooks=hooks, feed=feed, loss_fn=loss_fn)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    count = max(stats.count, 1)
    return LocalResult(
        weights=weights,
        examples=len(split),
        loss=stats.loss / count,
        acc=stats.acc / count,
        steps=result.steps,
        dp_steps=plan.steps_per_epoch * fed.local_epochs if plan else 0,
        sample_rate=plan.sample_rate if plan else 0.0,
    )


def poison_update(
    global_weights: dict[str, torch.Tensor], local: dict[str, torch.Tensor], kind: str, scale: float
) -> dict[str, torch.Tensor]:
    """A malicious client's reply: the update scaled (global + scale * (local - global)) or all NaN."""
    out = {}
    for key, value in local.items():
        if not value.is_floating_point():
            out[key] = value
        elif kind == "nan":
            out[key] = torch.full_like(value, float("nan"))
        else:
            out[key] = global_weights[key] + scale * (value - global_weights[key])
    return out
