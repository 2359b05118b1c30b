"""Between live models and .bhm records: `to_packed` reads a float, weight-shared, int8 or weight-only
(int8 / int4) model into a PackedModel; `build_from_packed` builds the zoo model from its config, resizes
pruned layers, and loads the weights back (re-creating the int8 modules with the stored scales for int8
runtimes, the weight-only modules for language models). A weight tied to another (a GPT's lm_head is its
token embedding) is stored once and tied again on load."""

from typing import Any

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
import torch.ao.quantization as tq
from torch import nn

from behemoth.compression.kmeans import Codebook
from behemoth.compression.pack_format import PackedFileError, PackedModel
from behemoth.compression.pack_records import Int8Weight, Record
from behemoth.compression.pack_weight_only_records import Int4WeightOnly, Int8WeightOnly
from behemoth.compression.quantize import (
    QUANT_LAYER_TYPES,
    convert,
    engine,
    prepared_static,
    quantize_dynamic,
    quiet,
)
from behemoth.compression.structured import resize_to_shapes
from behemoth.compression.weight_only import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    WeightOnlyError,
    weight_only_layers,
)
from behemoth.errors import ModelError
from behemoth.models import build_model
from behemoth.models.hf import build_hf_from_config, conv1d_as_linear, has_conv1d, hf_config_json
from behemoth.models.registry import example_input
from behemoth.spec import DataSpec


def shapes_of(model: nn.Module) -> dict[str, list[int]]:
    """Float state-dict shapes: recorded so a structurally pruned model is rebuilt at its pruned size."""
    return {name: list(t.shape) for name, t in model.state_dict().items() if isinstance(t, torch.Tensor)}


def int8_weight(qweight: torch.Tensor) -> Int8Weight:
    if qweight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return Int8Weight(
            qweight.int_repr(),
            qweight.q_per_channel_scales().double(),
            qweight.q_per_channel_zero_points().to(torch.int64),
            int(qweight.q_per_channel_axis()),
        )
    return Int8Weight(
        qweight.int_repr(),
        torch.tensor([qweight.q_scale()], dtype=torch.float64),
        torch.tensor([qweight.q_zero_point()], dtype=torch.int64),
        None,
    )


def qweight_of(record: Int8Weight) -> torch.Tensor:
    if record.axis is None:
        return torch._make_per_tensor_quantized_tensor(
            record.q, float(record.scales[0]), int(record.zero_points[0])
        )
    return torch._make_per_channel_quantized_tensor(
        record.q, record.scales.double(), record.zero_points, record.axis
    )


def _static_records(model: nn.Module) -> tuple[dict[str, Record], dict[str, list[float]]]:
    """int8 weights, float biases and activation (scale, zero point) of a QuantWrapper'd static model."""
    tensors: dict[str, Record] = {}
    activations = {"<input>": [float(model.quant.scale), float(model.quant.zero_point)]}
    covered = {"quant.scale", "quant.zero_point"}
    for name, module in model.module.named_modules():
        if isinstance(module, QUANT_LAYER_TYPES):
            tensors[f"{name}.weight"] = int8_weight(module.weight())
            if module.bias() is not None:
                tensors[f"{name}.bias"] = module.bias().detach().clone()
            activations[name] = [float(module.scale), float(module.zero_point)]
            covered.update(k for k in model.state_dict() if k.startswith(f"module.{name}."))
    left = [k for k in model.state_dict() if k not in covered]
    if left:
        raise PackedFileError(
            f"cannot pack this int8 model: state {left[0]!r} is of a kind .bhm does not store"
        )
    return tensors, activations


def _dynamic_records(model: nn.Module) -> dict[str, Record]:
    tensors: dict[str, Record] = {}
    dynamic = [
        name for name, m in model.named_modules() if isinstance(m, nnqd.Linear)
    ]  # module order: same bytes each run
    for name in dynamic:
        module = model.get_submodule(name)
        tensors[f"{name}.weight"] = int8_weight(module.weight())
        if module.bias() is not None:
            tensors[f"{name}.bias"] = module.bias().detach().clone()
    for key, value in model.state_dict().items():
        if not any(key.startswith(f"{name}.") for name in dynamic):
            tensors[key] = value.detach().clone()
    return tensors


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: name} for parameters that are another parameter (weight tying), by state-dict key."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _weight_only_records(model: nn.Module, aliases: dict[str, str]) -> dict[str, Record]:
    """Weight-only layers as int8w / int4w records (+ float biases), other tensors dense, aliases once."""
    layers = weight_only_layers(model)
    tensors: dict[str, Record] = {}
    for key, value in model.state_dict().items():
        layer = key.rpartition(".")[0]
        if key in aliases:
            continue
        if layer not in layers:
            tensors[key] = value.detach().cpu().clone()
        elif key.endswith(".bias"):
            tensors[key] = value.detach().float().clone()
        elif key.endswith((".weight_int8", ".weight_int4")):
            module = layers[layer]
            tensors[f"{layer}.weight"] = (
                Int8WeightOnly(module.weight_int8.clone(), module.scales.clone())
                if isinstance(module, Int8WeightOnlyLinear)
                else Int4WeightOnly(module.codes(), module.stored_scales_and_zeros().clone(), module.group)
            )
    return tensors


def to_packed(
    model: nn.Module,
    model_name: str,
    model_options: dict[str, Any],
    spec: DataSpec,
    *,
    shapes: dict[str, list[int]],
    codebooks: dict[str, Codebook] | None = None,
    engine_name: str = "x86",
    per_channel: bool = True,
    class_names: list[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> PackedModel:
    """Describe `model` (float, weight-shared via `codebooks`, static int8 or dynamic int8) as a
    PackedModel."""
    common = dict(
        shapes=shapes,
        engine=engine_name,
        per_channel=per_channel,
        class_names=list(class_names or []),
        meta=dict(meta or {}),
    )
    hf_config = hf_config_json(model)
    if hf_config is not None:
        if has_conv1d(model):  # see fresh_model
            raise ValueError("pack a Hugging Face model after conv1d_as_linear: .bhm stores Linear layouts")
        common["hf_config"] = hf_config
    if isinstance(model, tq.QuantWrapper) and isinstance(model.quant, nnq.Quantize):
        tensors, activations = _static_records(model)
        return PackedModel(
            model_name, model_options, spec, tensors, runtime="int8_static", activations=activations, **common
        )
    if any(isinstance(m, nnqd.Linear) for m in model.modules()):
        return PackedModel(
            model_name, model_options, spec, _dynamic_records(model), runtime="int8_dynamic", **common
        )
    aliases = tied_aliases(model)
    if weight_only_layers(model):
        tensors = _weight_only_records(model, aliases)
        return PackedModel(
            model_name, model_options, spec, tensors, runtime="weight_only", tied=aliases, **common
        )
    tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in aliases}
    for layer, book in (codebooks or {}).items():
        key = f"{layer}.weight"
        if not torch.equal(book.weight(), tensors[key].float()):
            raise ValueError(
                f"codebook of {layer} does not reproduce its weights (fine-tuned after clustering?)"
            )
        tensors[key] = book
    return PackedModel(model_name, model_options, spec, tensors, tied=aliases, **common)


def float_value(record: Record) -> torch.Tensor:
    if isinstance(record, Codebook):
        return record.weight()
    if isinstance(record, Int8Weight):
        return qweight_of(record).dequantize()
    if isinstance(record, (Int8WeightOnly, Int4WeightOnly)):
        raise PackedFileError("a weight-only int8/int4 weight in a float runtime: the header is inconsistent")
    return record


def _load_checked(model: nn.Module, tensors: dict[str, torch.Tensor], tied: dict[str, str], skip: set[str]):
    """load_state_dict that names what does not fit: unknown or missing tensors (bar tied aliases and the
    layers in `skip`, loaded separately) and wrong shapes, as PackedFileError."""
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise PackedFileError(f"the weights do not fit the model: {lines[-1]}") from None
    ties = tied_aliases(model)
    forged = [alias for alias, name in tied.items() if ties.get(alias) != name]
    if forged:  # an alias excuses a missing tensor only where the model really ties it
        raise PackedFileError(f"the header ties {forged[0]!r}, which this model does not tie")
    missing = [k for k in result.missing_keys if k not in tied and k.rpartition(".")[0] not in skip]
    if result.unexpected_keys or missing:
        what = f"unknown tensor {result.unexpected_keys[0]!r}" if result.unexpected_keys else ""
        what = what or f"no tensor for {missing[0]!r}"
        raise PackedFileError(f"the weights do not fit the model: {what}")


def _weight_only_module(name: str, model: nn.Module, record: Record, bias: torch.Tensor | None) -> nn.Module:
    """The int8/int4 module for `record`, checked against the Linear layer it replaces."""
    try:
        linear = model.get_submodule(name)
    except AttributeError:
        raise PackedFileError(f"tensor {name}.weight: the model has no layer {name!r}") from None
    shape = tuple(record.q.shape if isinstance(record, Int8WeightOnly) else record.codes.shape)
    if not isinstance(linear, nn.Linear) or shape != (linear.out_features, linear.in_features):
        raise PackedFileError(
            f"tensor {name}.weight: shape {list(shape)} does not fit layer {name} ({linear})"
        )
    if (bias is None) != (linear.bias is None) or (bias is not None and bias.shape != linear.bias.shape):
        raise PackedFileError(f"tensor {name}.bias does not fit layer {name}")
    try:
        if isinstance(record, Int8WeightOnly):
            return Int8WeightOnlyLinear(record.q, record.scales, bias)
        return Int4WeightOnlyLinear(record.codes, record.scales_and_zeros, record.group, bias)
    except WeightOnlyError as exc:
        raise PackedFileError(f"tensor {name}.weight: {exc}") from None


def _build_weight_only(model: nn.Module, packed: PackedModel) -> nn.Module:
    quantized = {
        key.removesuffix(".weight"): record
        for key, record in packed.tensors.items()
        if isinstance(record, (Int8WeightOnly, Int4WeightOnly))
    }
    for name, record in quantized.items():
        module = _weight_only_module(name, model, record, packed.tensors.get(f"{name}.bias"))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module)
    floats = {k: v for k, v in packed.tensors.items() if k.rpartition(".")[0] not in quantized}
    _load_checked(model, {k: float_value(v) for k, v in floats.items()}, packed.tied, set(quantized))
    return model.eval()


def fresh_model(packed: PackedModel) -> nn.Module:
    """The model a PackedModel's weights go into, built from its header: a zoo model from its name and
    options, a Hugging Face causal LM from the stored config.json (transformers' own classes, no code from
    anywhere, no model directory read), with GPT-2's Conv1D layers as the Linears they were packed as."""
    if packed.hf_config is None:
        return build_model(packed.model_name, packed.model_options, packed.spec)
    try:
        model = build_hf_from_config(packed.hf_config, packed.spec, "the packed model's hf_config")
    except ModelError as exc:
        raise PackedFileError(str(exc)) from None
    return conv1d_as_linear(model)


def build_from_packed(packed: PackedModel) -> nn.Module:
    """The runnable model of a PackedModel, in eval mode."""
    model = fresh_model(packed)
    resize_to_shapes(model, packed.shapes)
    model.eval()
    if packed.runtime == "float":
        _load_checked(model, {k: float_value(v) for k, v in packed.tensors.items()}, packed.tied, set())
        return model
    if packed.runtime == "weight_only":
        return _build_weight_only(model, packed)
    if packed.runtime == "int8_dynamic":
        floats = {k: v for k, v in packed.tensors.items() if not isinstance(v, Int8Weight)}
        model.load_state_dict(floats, strict=False)  # the Linear weights come next, as int8
        quantized = quantize_dynamic(model, packed.engine)
        for name, module in quantized.named_modules():
            if isinstance(module, nnqd.Linear):
                with engine(packed.engine):
                    module.set_weight_bias(
                        qweight_of(packed.tensors[f"{name}.weight"]), packed.tensors.get(f"{name}.bias")
                    )
        return quantized.eval()
    if packed.runtime == "int8_static":
        with quiet():  # observers that saw no data warn; their values are replaced just below
            quantized = convert(
                prepared_static(model, packed.engine, packed.per_channel),
                packed.engine,
                example_input(packed.spec),
            )
        with engine(packed.engine):
            for name, module in quantized.module.named_modules():
                if isinstance(module, QUANT_LAYER_TYPES):
                    module.set_weight_bias(
                        qweight_of(packed.tensors[f"{name}.weight"]), packed.tensors.get(f"{name}.bias")
                    )
                    module.scale, module.zero_point = (
                        packed.activations[name][0],
                        int(packed.activations[name][1]),
                    )
        scale, zero_point = packed.activations["<input>"]
        quantized.quant.scale.fill_(scale)
        quantized.quant.zero_point.fill_(int(zero_point))
        return quantized.eval()
    raise PackedFileError(f"unknown runtime {packed.runtime!r} in the packed model")
