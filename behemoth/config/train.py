"""The `[train]` section: optimizer, schedule, precision, strategy, evaluation, early stopping,
checkpoints."""

from typing import Literal

from pydantic import Field, field_validator

from behemoth.config.optimizers import optimizer_entry
from behemoth.config.section import Section


class EarlyStopConfig(Section):
    monitor: str = "val.loss"  # any logged metric, e.g. val.loss, val.acc
    mode: Literal["min", "max"] = "min"  # min: lower is better (a loss); max: higher (accuracy)
    patience: int = Field(0, ge=0)  # 0 disables early stopping
    min_delta: float = Field(0.0, ge=0.0)  # smallest change that counts as an improvement


class CheckpointConfig(Section):
    every_steps: int | None = Field(None, ge=1)  # also checkpoint every N optimizer steps
    keep_last: int = Field(2, ge=1)  # older checkpoints are deleted


class LoraConfig(Section):
    """[train.lora]: train low-rank adapters (peft's LoRA) beside frozen base weights, W + (alpha / r) B A.

    Only the adapters train, are checkpointed and are saved (in peft's format, in <run>/adapter/); `behemoth
    export RUN --merge --hf DIR` folds them into the weights. The base is model.path's weights for an hf
    model, or base_run's trained weights for a zoo model (gpt).
    """

    r: int = Field(8, ge=1)  # rank of each adapter
    alpha: float = Field(16.0, gt=0.0)  # the update is scaled by alpha / r
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the adapter's input
    # modules to adapt, by name or name suffix (gpt: "qkv", "proj", "fc"); None: peft's defaults for the
    # transformers model type (e.g. q_proj, v_proj for Llama)
    target_modules: list[str] | None = Field(None, min_length=1)
    modules_to_save: list[str] | None = None  # trained in full and saved too (e.g. a new classifier head)
    base_run: str | None = None  # a trained run whose final weights are the base (its model.safetensors)
    # QLoRA: hold the frozen base's Linears (not embeddings or the head) in 4 bits (torchao's NF4, as
    # torchtune's QLoRA) or 8 bits (int8, one scale per output channel); None: the base as it is
    base_bits: Literal[4, 8] | None = None


class TrainConfig(Section):
    epochs: int = Field(2, ge=1)  # passes over the training data
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps
    seed: int = 0  # model init, shuffling, augmentation, dropout: one seed, a repeatable run
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    threads: int | None = Field(None, ge=1)  # torch CPU threads; default: all cores
    strategy: Literal["auto", "single", "ddp", "fsdp", "pipeline"] = (
        "auto"  # auto: ddp under torchrun, else single
    )
    fsdp_offload: bool = False  # fsdp: sharded parameters, gradients and optimizer state live in CPU memory
    activation_checkpointing: bool = False  # recompute each block's activations in backward (gpt, vit, cnn)
    pipeline_microbatches: int = Field(4, ge=1)  # pipeline: chunks each global micro-batch is cut into
    pipeline_schedule: Literal["1f1b", "gpipe"] = "1f1b"  # pipeline: torch.distributed.pipelining schedule

    # optimizer: a registry name (see behemoth.config.optimizers), which also says which options it reads
    optimizer: str = "sgd"
    lr: float = Field(0.1, gt=0.0)  # peak learning rate (the schedule scales it)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)  # sgd, rmsprop
    nesterov: bool = False  # sgd
    dampening: float = Field(0.0, ge=0.0, le=1.0)  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw and their 8-bit versions
    eps: float = Field(1e-8, gt=0.0)  # added to the denominator (adaptive optimizers)
    alpha: float = Field(0.99, gt=0.0, le=1.0)  # rmsprop smoothing
    centered: bool = False  # rmsprop
    rho: float = Field(0.9, gt=0.0, le=1.0)  # adadelta
    weight_decay: float = Field(0.0, ge=0.0)  # L2 penalty (decoupled for adamw)
    decay_norm_and_bias: bool = False  # False: biases and norm weights get no weight decay
    optimizer_impl: Literal["default", "forloop", "foreach", "fused"] = (
        "default"  # torch.optim kernel; default: torch's pick
    )

    # learning-rate schedule
    schedule: Literal["constant", "step", "exponential", "cosine", "onecycle"] = "constant"
    schedule_unit: Literal["step", "epoch"] = "step"  # the schedule advances per optimizer step or per epoch
    step_size: int = Field(1, ge=1)  # step decay: decay every N units
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step/exponential decay factor per step_size/unit
    min_lr: float = Field(0.0, ge=0.0)  # cosine floor
    warmup: int = Field(0, ge=0)  # linear warmup length, in schedule units
    pct_start: float = Field(0.25, gt=0.0, lt=1.0)  # onecycle: fraction spent rising
    div_factor: float = Field(25.0, gt=0.0)  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = Field(1e4, gt=0.0)  # onecycle: last lr = initial lr / this

    # step details and regularisation
    clip_norm: float | None = Field(None, gt=0.0)  # clip the gradients' global L2 norm to this
    clip_value: float | None = Field(None, gt=0.0)  # clip every gradient element to [-v, v]
    accumulate: int = Field(1, ge=1)  # micro-batches per optimizer step
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # compute dtype (autocast); fp16: CUDA only
    param_dtype: Literal["fp32", "bf16"] = "fp32"  # storage of parameters and gradients (precision: compute)
    release_freed_memory: bool = (
        False  # glibc: unmap freed tensors at once, so RSS follows use (train/allocator.py)
    )
    channels_last: bool = False  # NHWC memory layout for image batches
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # cross-entropy against smoothed targets
    compile: bool = False  # torch.compile the train step

    # evaluation, logging, checkpoints
    eval_every_steps: int | None = Field(None, ge=1)  # also validate mid-epoch
    log_every: int = Field(50, ge=1)  # log training loss and accuracy every N steps
    early_stop: EarlyStopConfig = EarlyStopConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    lora: LoraConfig | None = None  # [train.lora]: low-rank adapters on a frozen base (off when absent)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        """Checked against the registry when read, so an entry added to it is accepted at once."""
        optimizer_entry(name)
        return name
