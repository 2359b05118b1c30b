"""The repeated blocks of a model: the units that activation checkpointing and FSDP take one at a time.

A convention rather than a registry: transformer blocks live in `model.blocks` (an nn.ModuleList: GPT,
ViT), convolutional blocks are the nn.Sequential children of `model.features` (the CNN's conv blocks).
A user model that follows it gets per-block checkpointing and sharding for free.

A Hugging Face model (behemoth.models.hf's adapter, peft-wrapped or not) states its own: transformers'
`_no_split_modules` names the classes that must stay whole on one device (LlamaDecoderLayer, GPT2Block,
ViTLayer), and the decoder layers are the nn.ModuleList of those (`model.model.layers`, `transformer.h`).
A model that names none falls back to the attribute paths transformers' architectures use.
"""

from torch import nn

# where transformers' architectures keep their layers, for a model whose _no_split_modules is empty
HF_LAYER_PATHS = (
    "model.layers",
    "transformer.h",
    "model.decoder.layers",
    "gpt_neox.layers",
    "transformer.blocks",
)


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in forward order; [] when it has none (it is then one unit)."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        # a pipeline stage keeps only its own blocks (the others are parameter-free placeholders)
        return [block for block in blocks if any(True for _ in block.parameters())]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [child for child in features.children() if isinstance(child, nn.Sequential)]
    return hf_layers(model)


def hf_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of the transformers model(s) inside `model`, in forward order: every nn.ModuleList whose
    entries are all of a `_no_split_modules` class (an encoder-decoder has two), outermost only; else the
    first known attribute path that holds a ModuleList."""
    unsplit = set()
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)  # a class attribute of PreTrainedModel
        if isinstance(names, (list, tuple, set)):
            unsplit.update(str(name) for name in names)
    if not unsplit:
        return _layers_at_known_paths(model)
    layers: list[nn.Module] = []
    inside: set[int] = set()  # modules within a layer already taken (a ModuleList in there is not a stack)
    for module in model.modules():
        if id(module) in inside:
            continue
        if (
            isinstance(module, nn.ModuleList)
            and len(module)
            and all(type(m).__name__ in unsplit for m in module)
        ):
            layers += list(module)
            inside.update(id(m) for layer in module for m in layer.modules())
    return layers or _layers_at_known_paths(model)


def _layers_at_known_paths(model: nn.Module) -> list[nn.Module]:
    for module in model.modules():
        if not hasattr(type(module), "config_class"):  # a transformers PreTrainedModel
            continue
        for path in HF_LAYER_PATHS:
            found = _attribute(module, path)
            if isinstance(found, nn.ModuleList) and len(found):
                return list(found)
    return []


def _attribute(module: nn.Module, path: str):
    for name in path.split("."):
        module = module._modules.get(name) if isinstance(module, nn.Module) else None
        if module is None:
            return None
    return module
