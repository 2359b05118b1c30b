"""The run config: one small typed section per stage, composed into RunConfig.

Every section forbids unknown keys, so a typo fails at load with the field's dotted path. This package is a
leaf (pydantic and the standard library only): `import behemoth.config` loads no torch. A model's own options
([model] beyond `name`) are checked against that model when it is built (behemoth.models), since the model
classes live with torch.
"""

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from behemoth.config.compress import CompressConfig
from behemoth.config.data import DataConfig
from behemoth.config.explain import ExplainConfig
from behemoth.config.federate import FederateConfig
from behemoth.config.section import Section
from behemoth.config.train import TrainConfig
from behemoth.config.tune import TuneConfig, check_config_path


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
    def _check_tune_space(self) -> "RunConfig":
        for key, spec in self.tune.space.items():
            check_config_path(RunConfig, key, spec)
        return self
