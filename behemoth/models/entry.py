"""What the zoo knows about one model: its typed options, its builder and the data it fits."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from torch import nn

from behemoth.spec import DataSpec, Task


@dataclass(frozen=True)
class ModelEntry:
    name: str
    summary: str
    options: type[BaseModel]  # the model's own typed config (extra keys forbidden)
    build: Callable[[Any, DataSpec], nn.Module]  # (options instance, data spec) -> module
    tasks: tuple[Task, ...]
    example_spec: DataSpec  # the data it is listed with in `behemoth models`
