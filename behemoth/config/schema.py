"""The run config: one small typed section per stage, composed into RunConfig.

Every section forbids unknown keys, so a typo fails at load with the field's dotted path. This package is a
leaf (pydantic and the standard library only): `import behemoth.config` loads no torch. A model's own options
([model] beyond `name`) are checked against that model when it is built (behemoth.models), since the model
classes live with torch.
"""

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from behemoth.config.compress import CompressConfig
from behemoth.config.data import DataConfig
from behemoth.config.explain import ExplainConfig
from behemoth.config.federate import FederateConfig
from behemoth.config.section import Section
from behemoth.config.train import TrainConfig
from behemoth.config.tune import TuneConfig, check_config_path
from behemoth.errors import ConfigError


class ModelConfig(Section):
    """`name` picks a registered model (or "pkg.module:factory"); the other keys are that model's options.

    The options are validated against the chosen model's own config class when the model is built
    (behemoth.models.check_model_config does it up front, before anything is loaded or written).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = "cnn"  # a zoo model (`behemoth models`) or "pkg.module:factory"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


TEXT_DATASETS = ("kjv", "python-docs", "text")  # the datasets data.tokenizer applies to


class RunConfig(Section):
    name: str = Field(
        "run", min_length=1, pattern=r"^[A-Za-z0-9._-]+$"
    )  # the run directory: <runs_dir>/<name>
    runs_dir: str = "runs"  # where run directories are created
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()  # read by `behemoth tune` only
    explain: ExplainConfig = ExplainConfig()  # read by `behemoth explain` only
    compress: CompressConfig = CompressConfig()  # read by `behemoth compress` and `behemoth distill` only
    federate: FederateConfig = FederateConfig()  # read by `behemoth federate` only

    @model_validator(mode="after")
    def _hf_model_reads_its_tokens(self) -> "RunConfig":
        """model.name = "hf": its path made absolute (a run's config.toml then reloads the model from any
        working directory), and text data tokenized by the model's own tokenizer unless data.tokenizer
        says otherwise."""
        path = self.model.options.get("path") if self.model.name == "hf" else None
        if not isinstance(path, str) or not path:
            return self
        path = str(Path(path).expanduser().resolve())
        self.model.path = path
        if self.data.name in TEXT_DATASETS and "tokenizer" not in self.data.model_fields_set:
            self.data.tokenizer = "hf"
        if self.data.tokenizer == "hf" and self.data.tokenizer_path is None:
            self.data.tokenizer_path = path
        return self

    @model_validator(mode="after")
    def _lora_has_a_base(self) -> "RunConfig":
        """A zoo model has no pretrained weights of its own: LoRA needs named layers and a trained base."""
        lora = self.train.lora
        if lora is None or self.model.name == "hf":
            return self
        if lora.target_modules is None:
            raise ConfigError(
                f"train.lora.target_modules: name the layers to adapt for model.name = {self.model.name!r} "
                '(gpt: ["qkv", "proj", "fc"])'
            )
        if lora.base_run is None:
            raise ConfigError(
                f"train.lora.base_run: model.name = {self.model.name!r} has no pretrained weights; name the "
                "trained run whose weights the adapters adapt"
            )
        return self

    @model_validator(mode="after")
    def _adapters_only_has_adapters(self) -> "RunConfig":
        """federate.adapters_only sends the LoRA adapters: without [train.lora] there is nothing to send."""
        if self.federate.adapters_only and self.train.lora is None:
            raise ConfigError(
                "federate.adapters_only = true: needs [train.lora] (the adapters are what travel); add a "
                "[train.lora] section or set federate.adapters_only = false"
            )
        return self

    @model_validator(mode="after")
    def _check_tune_space(self) -> "RunConfig":
        for key, spec in self.tune.space.items():
            check_config_path(RunConfig, key, spec)
        return self
