"""Build a zoo model (behemoth.models.zoo), a local Hugging Face directory ("hf", behemoth.models.hf) or a
user's "pkg.module:factory", checked against the data.

A factory's module is imported only if the user trusts it (behemoth.models.trust): every path that turns a
name into a model (configs, run directories, .bhm headers, the Python API) comes through here."""

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from behemoth.errors import ConfigError, ModelError
from behemoth.models.entry import ModelEntry
from behemoth.models.trust import check_defined_in_trusted, check_trusted
from behemoth.models.zoo import ZOO
from behemoth.spec import DataSpec

HF_MODEL = "hf"  # not a zoo entry: it has no example to list, its weights come from model.path


def list_models() -> list[ModelEntry]:
    return sorted(ZOO.values(), key=lambda e: e.name)


def is_user_model(name: str) -> bool:
    return ":" in name


def validate_model_options(name: str, options: dict[str, Any]) -> BaseModel | dict[str, Any]:
    """Check `[model]` keys against the chosen model's options; raise ConfigError naming model.<key>."""
    if is_user_model(name):
        load_user_factory(name)
        return options
    if name == HF_MODEL:
        from behemoth.models.hf import HFOptions

        return _validated(HFOptions, options)
    if name not in ZOO:
        known = ", ".join(sorted(ZOO))
        raise ConfigError(
            f"model.name = {name!r}: unknown model (known: {known}; 'hf' with model.path = a local Hugging "
            "Face directory; or 'package.module:factory')"
        )
    return _validated(ZOO[name].options, options)


def _validated(options_class: type[BaseModel], options: dict[str, Any]) -> BaseModel:
    try:
        return options_class.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(["model", *(str(p) for p in err["loc"])])
        if err["type"] == "missing":
            raise ConfigError(f"{where}: required, and not given") from None
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where} = {err.get('input')!r}: {msg}") from None


def load_user_factory(name: str) -> Callable[..., nn.Module]:
    """The factory a "pkg.module:factory" name points at. The name may come from someone else's file (a
    .bhm header, a run's config.toml), so its module must be one the user trusts before any import, and
    the factory must be defined in trusted code, not merely imported there."""
    check_trusted(name)
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure is the user's module, report it in one line
        raise ConfigError(f"model.name = {name!r}: cannot import {module_name}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.name = {name!r}: {module_name} has no callable {attr!r}")
    check_defined_in_trusted(name, factory)
    return factory


def build_model(name: str, options: dict[str, Any], spec: DataSpec) -> nn.Module:
    """Build a model for data of shape `spec` and check that its output fits the labels."""
    if is_user_model(name):
        factory = load_user_factory(name)
        kwargs = dict(options)
        if "spec" in inspect.signature(factory).parameters:
            kwargs["spec"] = spec
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            raise ModelError(f"model {name}: factory rejected its options {sorted(options)}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ModelError(f"model {name}: factory returned {type(model).__name__}, not a torch.nn.Module")
    elif name == HF_MODEL:
        from behemoth.models.hf import build_hf

        model = build_hf(validate_model_options(name, options), spec)
    else:
        entry = ZOO[name]
        if spec.task not in entry.tasks:
            raise ModelError(
                f"model {name!r} does not support {spec.task} data (supports: {', '.join(entry.tasks)})"
            )
        model = entry.build(validate_model_options(name, options), spec)
    check_output_shape(model, spec, name)
    return model


def expected_output_shape(spec: DataSpec, batch: int) -> tuple[int, ...]:
    if spec.task == "language_model":
        return (batch, spec.input_shape[0], spec.num_classes)
    return (batch, spec.num_classes)


def example_input(spec: DataSpec, batch: int = 2) -> torch.Tensor:
    if spec.task == "language_model":
        return torch.zeros((batch, *spec.input_shape), dtype=torch.long)
    return torch.zeros((batch, *spec.input_shape))


def check_output_shape(model: nn.Module, spec: DataSpec, name: str) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_input(spec))
    except Exception as exc:
        if any(p.is_meta for p in model.parameters()):
            return  # names and shapes only (built on the meta device): some ops (.item()) cannot run there
        raise ModelError(
            f"model {name}: forward failed on input of shape {(2, *spec.input_shape)}: {exc}"
        ) from None
    finally:
        model.train(was_training)
    want = expected_output_shape(spec, 2)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"model {name}: output shape {got} does not match the data (expected {want}: "
            f"{spec.num_classes} {'tokens' if spec.task == 'language_model' else 'classes'})"
        )
