"""Typed sections of a run config: one small pydantic model per stage, composed into RunConfig.

Every model forbids unknown keys, so a typo fails at load with the field's dotted path.
Later stages add their own section class here ([compress], [explain], ...).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from behemoth.data.pipeline_config import AugmentConfig, SamplingConfig, ShardsConfig
from behemoth.compression.config import CompressConfig
from behemoth.explanations.config import ExplainConfig
from behemoth.federated.config import FederateConfig
from behemoth.tuning.config import TuneConfig

PositiveInt = Field(ge=1)


class Section(BaseModel):
    """Base of every config section: strict keys, values checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    name: str = "mnist"  # mnist | fashion_mnist | digits | kjv | text | folder | table | arrays | shards
    path: str | None = None  # file or folder for text/folder/table/arrays
    label_column: str | None = None  # table: the column holding the label
    image_size: tuple[int, int] | None = None  # folder: resize every image to (H, W)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    train_limit: int | None = Field(None, ge=1)  # keep only the first N training samples
    test_limit: int | None = Field(None, ge=1)
    block_size: int = Field(128, ge=2)  # text: tokens per training sequence
    tokenizer: Literal["byte", "bpe"] = "byte"  # text: UTF-8 bytes (256 tokens) or BPE trained on the train split
    vocab_size: int | None = Field(None, ge=257, le=65536)  # bpe: vocabulary size (default 2048)
    sampling: SamplingConfig = SamplingConfig()  # which training rows an epoch visits
    augment: AugmentConfig = AugmentConfig()  # batched training augmentation (ops off by default)
    shards: ShardsConfig = ShardsConfig()  # data.name = "shards" reading; `behemoth data pack` options

    @field_validator("vocab_size")
    @classmethod
    def _vocab_size_needs_bpe(cls, vocab_size: int | None, info: ValidationInfo) -> int | None:
        if vocab_size is not None and info.data.get("tokenizer") == "byte":
            raise ValueError("needs data.tokenizer = 'bpe' (the byte tokenizer always has 256 tokens)")
        return vocab_size


class ModelConfig(Section):
    """`name` picks a registered model (or "pkg.module:factory"); the other keys are that model's options.

    The options are validated against the chosen model's own config class when the run config loads.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = "cnn"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EarlyStopConfig(Section):
    monitor: str = "val.loss"  # any logged metric, e.g. val.loss, val.acc
    mode: Literal["min", "max"] = "min"
    patience: int = Field(0, ge=0)  # 0 disables early stopping
    min_delta: float = Field(0.0, ge=0.0)


class CheckpointConfig(Section):
    every_steps: int | None = Field(None, ge=1)  # also checkpoint every N optimizer steps
    keep_last: int = Field(2, ge=1)


class TrainConfig(Section):
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch CPU threads; default: all cores
    strategy: Literal["auto", "single", "ddp", "fsdp", "pipeline"] = "auto"  # auto: ddp under torchrun, else single
    fsdp_offload: bool = False  # fsdp: sharded parameters, gradients and optimizer state live in CPU memory
    activation_checkpointing: bool = False  # recompute each block's activations in backward (gpt, vit, cnn)
    pipeline_microbatches: int = Field(4, ge=1)  # pipeline: chunks each global micro-batch is cut into
    pipeline_schedule: Literal["1f1b", "gpipe"] = "1f1b"  # pipeline: torch.distributed.pipelining schedule

    # optimizer (torch.optim)
    optimizer: Literal["sgd", "adagrad", "rmsprop", "adam", "adamw", "adadelta", "adam8bit", "adamw8bit"] = "sgd"
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    dampening: float = Field(0.0, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    alpha: float = Field(0.99, gt=0.0, le=1.0)  # rmsprop smoothing
    centered: bool = False  # rmsprop
    rho: float = Field(0.9, gt=0.0, le=1.0)  # adadelta
    weight_decay: float = Field(0.0, ge=0.0)
    decay_norm_and_bias: bool = False  # False: biases and norm weights get no weight decay
    optimizer_impl: Literal["default", "forloop", "foreach", "fused"] = "default"  # torch.optim kernel; default: torch's pick

    # learning-rate schedule
    schedule: Literal["constant", "step", "exponential", "cosine", "onecycle"] = "constant"
    schedule_unit: Literal["step", "epoch"] = "step"
    step_size: int = Field(1, ge=1)  # step decay: decay every N units
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step/exponential decay factor per step_size/unit
    min_lr: float = Field(0.0, ge=0.0)  # cosine floor
    warmup: int = Field(0, ge=0)  # linear warmup length, in schedule units
    pct_start: float = Field(0.25, gt=0.0, lt=1.0)  # onecycle: fraction spent rising
    div_factor: float = Field(25.0, gt=0.0)  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = Field(1e4, gt=0.0)

    # step details and regularisation
    clip_norm: float | None = Field(None, gt=0.0)
    clip_value: float | None = Field(None, gt=0.0)
    accumulate: int = Field(1, ge=1)  # micro-batches per optimizer step
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    param_dtype: Literal["fp32", "bf16"] = "fp32"  # storage of parameters and gradients (precision: compute)
    release_freed_memory: bool = False  # glibc: unmap freed tensors at once, so RSS follows use (train/allocator.py)
    channels_last: bool = False
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    compile: bool = False

    # evaluation, logging, checkpoints
    eval_every_steps: int | None = Field(None, ge=1)  # also validate mid-epoch
    log_every: int = Field(50, ge=1)
    early_stop: EarlyStopConfig = EarlyStopConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()


class RunConfig(Section):
    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    runs_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()  # read by `behemoth tune` only
    explain: ExplainConfig = ExplainConfig()  # read by `behemoth explain` only
    compress: CompressConfig = CompressConfig()  # read by `behemoth compress` and `behemoth distill` only
    federate: FederateConfig = FederateConfig()  # read by `behemoth federate` only

    @model_validator(mode="after")
    def _check_model_options(self) -> "RunConfig":
        from behemoth.models.registry import validate_model_options

        validate_model_options(self.model.name, self.model.options)
        return self
