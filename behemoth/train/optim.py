"""Optimizers from config: a thin mapping onto torch.optim, plus the no-decay parameter groups."""

from typing import Iterable

import torch
from torch import nn

from behemoth.config import TrainConfig
from behemoth.errors import ConfigError

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Split parameters into decayed and non-decayed groups.

    Decaying biases and normalisation gains only shrinks them towards 0 with no regularising benefit
    (the usual practice since BERT/GPT-2), so by default they get weight_decay 0.
    """
    if decay_norm_and_bias or weight_decay == 0.0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:  # tied weights (GPT's lm_head) appear twice
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES) or name.endswith("bias") or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(params: Iterable | list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """torch.optim optimizer named by cfg.optimizer, with the options that optimizer understands."""
    name = cfg.optimizer
    if name == "sgd":
        if cfg.nesterov and (cfg.momentum <= 0 or cfg.dampening != 0):
            raise ConfigError("train.nesterov = true: needs train.momentum > 0 and train.dampening = 0")
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, dampening=cfg.dampening, nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum, centered=cfg.centered,
            weight_decay=cfg.weight_decay,
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, rho=cfg.rho, eps=cfg.eps, weight_decay=cfg.weight_decay)
    raise ConfigError(f"train.optimizer = {name!r}: unknown optimizer")


def optimizer_for(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return build_optimizer(parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias), cfg)
