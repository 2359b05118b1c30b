"""The optimizer registry: every `train.optimizer`, as one entry of plain data.

Data, not code, because `behemoth.config` stays a torch-free leaf: the config checks names against it,
behemoth.training.optim builds from it (resolving the dotted target only at build time) and the memory
plan (behemoth.distributed.plan) reads the state size from it. Adding an optimizer is one entry here.
"""

from dataclasses import dataclass


def same(*fields: str) -> tuple[tuple[str, str], ...]:
    """Options passed under their TrainConfig name (keyword == field), the usual case."""
    return tuple((name, name) for name in fields)


@dataclass(frozen=True)
class OptimizerEntry:
    """How to build one optimizer and how much state it keeps.

    target: "module.Class" (a torch.optim-style class, given `options` and train.optimizer_impl's keywords)
    or "module:function" (a builder called as function(params, cfg) that reads cfg itself).
    options: (keyword, TrainConfig field) pairs passed to a class target.
    fused: torch.optim has a fused kernel for it (train.optimizer_impl = "fused" is allowed).
    slots + slots_if: per-parameter state tensors; each option named in slots_if adds one when it is set
    (momentum > 0, centered). bytes_per_value: size of a state value, None for the parameter's own dtype.
    """

    target: str
    options: tuple[tuple[str, str], ...] = ()
    fused: bool = False
    slots: int = 0
    slots_if: tuple[str, ...] = ()
    bytes_per_value: float | None = None

    @property
    def is_builder(self) -> bool:
        """A "module:function" target: called with (params, cfg), not given options or impl keywords."""
        return ":" in self.target

    def state_slots(self, **options: object) -> int:
        """Per-parameter state tensors for these option values (options not given count as unset)."""
        return self.slots + sum(bool(options.get(name)) for name in self.slots_if)


_LOW_BIT = 1 + 4 / 256  # one byte per value + an fp32 scale per block of 256
_ADAM = same("lr", "betas", "eps", "weight_decay")

OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(
        "torch.optim.SGD",
        same("lr", "momentum", "dampening", "nesterov", "weight_decay"),
        fused=True,
        slots_if=("momentum",),
    ),
    "adagrad": OptimizerEntry("torch.optim.Adagrad", same("lr", "eps", "weight_decay"), fused=True, slots=1),
    "rmsprop": OptimizerEntry(
        "torch.optim.RMSprop",
        same("lr", "alpha", "eps", "momentum", "centered", "weight_decay"),
        slots=1,
        slots_if=("momentum", "centered"),
    ),
    "adam": OptimizerEntry("torch.optim.Adam", _ADAM, fused=True, slots=2),
    "adamw": OptimizerEntry("torch.optim.AdamW", _ADAM, fused=True, slots=2),
    "adadelta": OptimizerEntry("torch.optim.Adadelta", same("lr", "rho", "eps", "weight_decay"), slots=2),
    # torchao's blockwise 8-bit Adam/AdamW; the builder takes lr, betas, eps, weight_decay from cfg
    "adam8bit": OptimizerEntry("behemoth.training.optim:low_bit_adam", slots=2, bytes_per_value=_LOW_BIT),
    "adamw8bit": OptimizerEntry("behemoth.training.optim:low_bit_adam", slots=2, bytes_per_value=_LOW_BIT),
}


def optimizer_entry(name: str) -> OptimizerEntry:
    """The registry entry for `name`; ValueError naming the known optimizers when there is none."""
    entry = OPTIMIZERS.get(name)
    if entry is None:
        raise ValueError(f"unknown optimizer (known: {', '.join(OPTIMIZERS)})")
    return entry
