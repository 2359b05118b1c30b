"""Optimizers from config: the registry's entry (behemoth.config.optimizers) built generically onto
torch.optim (and torchao's 8-bit Adam), plus no-decay groups.

train.optimizer_impl picks torch.optim's kernel: "forloop" (one parameter at a time: the least extra memory),
"foreach" (all parameters per op: fewer, larger kernels, one extra temporary per state), "fused" (one kernel
per step, no temporaries; registry entries with fused=True) or "default" (torch's choice: forloop on CPU,
foreach on CUDA).

adam8bit / adamw8bit keep both Adam moments as blockwise-quantized 8-bit tensors (Dettmers et al. 2021,
"8-bit Optimizers via Block-wise Quantization"): 2 bytes per parameter instead of 8. They come from torchao
(`torchao.optim.Adam8bit/AdamW8bit`, checked on CPU); tensors under 4096 values keep full-precision states,
as in bitsandbytes. With bf16 parameters the update is rounded stochastically so small steps are not lost.
"""

import functools
import importlib
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from behemoth.config import TrainConfig
from behemoth.config.optimizers import OPTIMIZERS, OptimizerEntry, optimizer_entry
from behemoth.errors import ConfigError
from behemoth.training.precision import check_param_dtype

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
IMPL_OPTIONS = {
    "default": {},
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


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


def impl_options(cfg: TrainConfig) -> dict:
    """torch.optim keyword arguments for train.optimizer_impl, refused where the optimizer lacks that
    kernel."""
    if cfg.optimizer_impl == "fused" and not _entry(cfg).fused:
        fused = ", ".join(name for name, entry in OPTIMIZERS.items() if entry.fused)
        raise ConfigError(
            f"train.optimizer_impl = 'fused': torch.optim has no fused {cfg.optimizer} "
            f"(fused: {fused}); use 'foreach' or 'forloop'"
        )
    return IMPL_OPTIONS[cfg.optimizer_impl]


def build_optimizer(params: Iterable | list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by cfg.optimizer, built from its registry entry with the options it understands."""
    entry = _entry(cfg)
    target = resolve(entry.target)
    if entry.is_builder:  # reads cfg itself (options, optimizer_impl)
        return target(params, cfg)
    _check_options(entry, cfg)
    options = {keyword: getattr(cfg, field) for keyword, field in entry.options}
    return target(params, **options, **impl_options(cfg))


def resolve(target: str) -> Callable:
    """A registry target ("package.module.Class" or "package.module:builder") -> the object, imported only
    when an optimizer is built (behemoth.config must not import torch)."""
    module, _, name = target.rpartition(":") if ":" in target else target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _entry(cfg: TrainConfig) -> OptimizerEntry:
    try:
        return optimizer_entry(cfg.optimizer)
    except ValueError as exc:  # a config built without validation (model_construct)
        raise ConfigError(f"train.optimizer = {cfg.optimizer!r}: {exc}") from None


def _check_options(entry: OptimizerEntry, cfg: TrainConfig) -> None:
    """Option rules torch would only report as a bare ValueError, checked where the option is passed.

    Here rather than in TrainConfig: with validate_assignment a cross-field rule there would refuse
    overrides applied one at a time (nesterov before momentum)."""
    fields = {field for _, field in entry.options}
    if "nesterov" in fields and cfg.nesterov and (cfg.momentum <= 0 or cfg.dampening != 0):
        raise ConfigError("train.nesterov = true: needs train.momentum > 0 and train.dampening = 0")


def _torchao_optim():
    """torchao.optim, imported quietly: torchao logs a warning for each CUDA-only extension it cannot load."""
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    # torch warns on every compile that torchao's state subclass has no stable hash for its AOT cache
    warnings.filterwarnings("ignore", message="OptimState8bit does not implement _stable_hash_for_caching")
    try:
        import torchao.optim
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return torchao.optim


class _FloatLR:
    """torchao stores each group's lr as a tensor (so its compiled step does not recompile when a schedule
    changes it) and refuses a float. The loop, schedulers and metrics.jsonl expect a float lr, so the groups
    keep a float and torchao sees a tensor only inside step()."""

    def add_param_group(self, param_group: dict) -> None:
        torch.optim.Optimizer.add_param_group(self, param_group)  # skip torchao's float -> tensor conversion

    def step(self, closure=None):
        rates = [group["lr"] for group in self.param_groups]
        for group, lr in zip(self.param_groups, rates):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, rates):
                group["lr"] = lr


@functools.cache
def _low_bit_class(name: str) -> type:
    optim = _torchao_optim()
    base = optim.AdamW8bit if name == "adamw8bit" else optim.Adam8bit
    return type(base.__name__, (_FloatLR, base), {"__module__": __name__})


def low_bit_adam(params: Iterable | list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """torchao's blockwise 8-bit Adam/AdamW (block of 256 values, one fp32 scale per block)."""
    if cfg.optimizer_impl != "default":
        raise ConfigError(
            f"train.optimizer_impl = {cfg.optimizer_impl!r}: {cfg.optimizer} has one kernel "
            "(torchao's compiled step); leave optimizer_impl = 'default'"
        )
    optimizer_class = _low_bit_class(cfg.optimizer)
    params = list(params)
    flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    bf16 = any(p.dtype == torch.bfloat16 for p in flat)
    return optimizer_class(
        params,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        bf16_stochastic_round=bf16,
    )


def optimizer_for(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    check_param_dtype(model, cfg.param_dtype)
    return build_optimizer(parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias), cfg)


def _storages(tensor: torch.Tensor) -> Iterator[torch.UntypedStorage]:
    names = getattr(tensor, "tensor_attrs", None)  # a torchao state subclass: the plain tensors it is made of
    if names:
        for name in names:
            yield from _storages(getattr(tensor, name))
    else:
        yield tensor.untyped_storage()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes the optimizer's state really holds: a quantized state counts its codes and block scales, not
    the dtype it poses as; storage shared between states (torchao's 256-entry code map) counts once."""
    storages = {
        storage.data_ptr(): storage.nbytes()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
        for storage in _storages(value)
    }
    return sum(storages.values())
