"""QLoRA: the frozen base under LoRA adapters held in 4 bits (NF4) or 8 bits (int8), for train.lora.base_bits.

4 bits is what torchtune's QLoRA does: torchao's NF4Tensor (the NormalFloat-4 data type of the QLoRA paper,
64-weight blocks with double-quantized int8 scales) as the weight, and torchao's `linear_nf4`, an autograd
function that dequantizes the weight on the fly in forward and again in backward, so only 4-bit weights stay
alive and gradients reach the layer's input (and so the adapters). torchao rather than bitsandbytes because
bitsandbytes' 4-bit CPU kernel tries to fetch code from a model hub at import and cannot load here.

8 bits is a small module of our own: an int8 weight with one scale per output channel and a dequantize-on-
the-fly linear whose backward also dequantizes (torchao's int8 weight-only configs have no backward to the
input of a frozen layer, and `F.linear` on a dequantized copy would keep every layer's full-precision copy
alive until backward, undoing the saving).

Which layers: every frozen nn.Linear of the base (the adapted projections' base layers and the decoder layers'
other Linears); never the adapters, a trained module (modules_to_save), the output head or anything tied to
an embedding. The base is re-quantized from its source (model.path) whenever the model is built, so
checkpoints hold the adapters only and a resumed run quantizes the same weights to the same codes.
"""

import importlib
from typing import Any

import torch
from torch import nn

NF4_MODULE = "torchao.quantization.quantize_.workflows.nf4.nf4_tensor"  # torchao 0.18's home of NF4Tensor
NF4_BLOCK = 64  # weights per absmax block (the QLoRA paper's and torchao's default)
NF4_SCALER_BLOCK = 256  # block scales per double-quantization block (torchao's default)


def _nf4() -> Any:
    # importlib: torchao's NF4 module moved between releases (torchao.dtypes.nf4tensor is gone in 0.18)
    return importlib.import_module(NF4_MODULE)


def largest_divisor_at_most(n: int, cap: int) -> int:
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


class NF4Linear(nn.Module):
    """A frozen Linear whose weight is a torchao NF4Tensor: y = x W^T + b with W dequantized on the fly."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        numel = weight.numel()
        # torchao needs whole blocks: 64 weights per block and 256 block scales per scale block, shrunk to
        # divisors for small layers (a tiny test model's 32 x 32 projection has only 16 blocks)
        block = largest_divisor_at_most(numel, NF4_BLOCK)
        scaler_block = largest_divisor_at_most(numel // block, NF4_SCALER_BLOCK)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(_nf4().to_nf4(weight, block, scaler_block), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    @classmethod
    def holding(cls, weight: torch.Tensor) -> "NF4Linear":
        """A bias-free layer around an NF4Tensor (out, in) made elsewhere (random_nf4)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = weight.shape
        layer.weight = nn.Parameter(weight, requires_grad=False)
        layer.bias = None
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _nf4().linear_nf4(x.to(self.weight.dtype), self.weight)  # (..., out)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> nn.Linear:
        """A plain Linear with the weight this layer computes with (for merging adapters into it)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear.weight = nn.Parameter(self.weight.get_original_weight(), requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return linear


class _Int8LinearFn(torch.autograd.Function):
    """x (..., in) -> x (q * scale)^T: the int8 weight is dequantized in forward and again in backward, so
    no full-precision copy is saved between them. Gradient to x only (the weight is frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, scale)
        return x @ (q.to(x.dtype) * scale.to(x.dtype)[:, None]).T

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        q, scale = ctx.saved_tensors
        return grad @ (q.to(grad.dtype) * scale.to(grad.dtype)[:, None]), None, None


class Int8Linear(nn.Module):
    """A frozen Linear held as int8 with one absmax scale per output channel (symmetric, -127..127)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1).float().clamp_min(1e-12) / 127.0  # (out,)
        q = torch.round(weight.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = weight.dtype
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale.to(weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    @classmethod
    def holding(cls, q: torch.Tensor, scale: torch.Tensor) -> "Int8Linear":
        """A bias-free layer around int8 codes (out, in) and row scales (out,), computing in scale's dtype."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = q.shape
        layer.compute_dtype = scale.dtype
        layer.register_buffer("weight", q)
        layer.register_buffer("scale", scale)
        layer.bias = None
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Int8LinearFn.apply(x.to(self.compute_dtype), self.weight, self.scale)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        weight = self.weight.to(self.compute_dtype) * self.scale[:, None]
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        return linear


QUANTIZERS: dict[int, type[nn.Module]] = {4: NF4Linear, 8: Int8Linear}


def kept_in_full(model: nn.Module) -> set[int]:
    """ids of Linears that must stay as they are: the output head, and any Linear tied to an embedding."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = set()
    for module in model.modules():
        get_head = getattr(module, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if isinstance(head, nn.Module):
            heads.add(id(head))
    return heads | {id(m) for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) in embeddings}


def quantize_frozen_base(model: nn.Module, bits: int) -> int:
    """Replace every frozen nn.Linear of `model` (adapters and trained modules untouched) by its `bits`-bit
    version, in place; the number replaced."""
    import peft

    quantize = QUANTIZERS[bits]
    skip = kept_in_full(model)
    for wrapper in model.modules():  # modules_to_save: both the trained copy and the original stay
        if isinstance(wrapper, peft.utils.other.ModulesToSaveWrapper):
            skip |= {id(m) for m in wrapper.modules()}
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or id(child) in skip or child.weight.requires_grad:
                continue
            setattr(parent, name, quantize(child))
            replaced += 1
    return replaced


def dequantize_base(model: nn.Module) -> None:
    """Quantized Linears back to plain ones holding the weights they computed with, in place (so peft can
    merge the adapters into them)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (NF4Linear, Int8Linear)):
                setattr(parent, name, child.dequantized())


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds: a tensor subclass (NF4Tensor) counts the inner tensors it stores."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each shared tensor once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen.setdefault(id(tensor), tensor_bytes(tensor))
    return sum(seen.values())


NF4_RMS = 0.517  # root mean square of the 16 NF4 levels (drawn uniformly: weights of std NF4_RMS * absmax)


def random_nf4(out_features: int, in_features: int, std: float, generator: torch.Generator) -> Any:
    """An NF4Tensor (out, in) of random weights of about `std`, drawn as codes and block scales directly:
    no (out, in) float tensor is made, and no quantization runs (torchao's to_nf4 takes ~0.3 s per million
    weights on 2 cores: an hour for 7B). Codes uniform over the 16 levels; block absmax std / NF4_RMS with
    10% spread; the block scales double-quantized by torchao's own code, as to_nf4 does."""
    nf4 = _nf4()
    numel = out_features * in_features
    block = largest_divisor_at_most(numel, NF4_BLOCK)
    scaler_block = largest_divisor_at_most(numel // block, NF4_SCALER_BLOCK)
    n_blocks = numel // block
    absmax = std / NF4_RMS * (1 + 0.1 * torch.randn(n_blocks, generator=generator)).abs()  # (n_blocks,)
    # block size 1: the scalers are their own absmax, so this is to_nf4's second (double) quantization
    scalers, factor, mean = nf4.NF4Tensor.double_quantize_scalers(absmax.to(torch.bfloat16), 1, scaler_block)
    codes = torch.randint(0, 256, (numel // 2,), dtype=torch.uint8, generator=generator)  # 2 codes a byte
    levels = nf4.NF4Tensor.from_tensor(torch.zeros(1, block, dtype=torch.bfloat16), block, 1).nf4
    shape = torch.Size((out_features, in_features))
    meta = nf4.SubclassTensorArgs(shape, (in_features, 1), 0, torch.bfloat16, torch.device("cpu"), False)
    return nf4.NF4Tensor(meta, block, n_blocks, scaler_block, scalers, factor, mean, codes, nf4=levels)


def random_int8(
    out_features: int, in_features: int, std: float, generator: torch.Generator, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes (out, in), uniform over -127..127, and per-row scales giving weights of about `std`."""
    q = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=generator)
    scale = torch.full((out_features,), std / 73.3, dtype=dtype)  # 73.3: std of the uniform codes
    return q, scale


def materialize_quantized(
    model: nn.Module,
    bits: int,
    *,
    dtype: torch.dtype = torch.bfloat16,
    adapter_dtype: torch.dtype = torch.float32,
    std: float = 0.02,
    seed: int = 0,
) -> nn.Module:
    """Give a model built on the meta device (peft adapters already added) random weights, in place, one
    Linear at a time: each frozen Linear is drawn straight in `bits` (random_nf4 / random_int8), so no
    full-precision copy of the base ever exists (what a memory benchmark of a 7B QLoRA step needs).
    Embeddings, norms and the head: frozen, in `dtype`; adapters: trainable, in `adapter_dtype`, with peft's
    own init (B = 0, so the adapted model equals the base). Random weights: for memory and speed
    measurements, not for quality."""
    import peft

    generator = torch.Generator().manual_seed(seed)
    skip = kept_in_full(model)
    for parent in list(model.modules()):  # model order: decoder layer by decoder layer
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or id(child) in skip or not child.weight.is_meta:
                continue
            if child.weight.requires_grad or child.bias is not None:
                continue  # a trained Linear (an adapter), or one with a bias: filled below, unquantized
            shape = (child.out_features, child.in_features, std, generator)
            layer = (
                NF4Linear.holding(random_nf4(*shape))
                if bits == 4
                else Int8Linear.holding(*random_int8(*shape, dtype))
            )
            setattr(parent, name, layer)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            kind = adapter_dtype if param.requires_grad else dtype
            if name == "bias":
                value = torch.zeros(param.shape, dtype=kind)
            elif "norm" in type(module).__name__.lower():
                value = torch.ones(param.shape, dtype=kind)
            else:
                value = torch.empty(param.shape, dtype=kind).normal_(0.0, std, generator=generator)
            module._parameters[name] = nn.Parameter(value, requires_grad=param.requires_grad)
        if isinstance(module, peft.tuners.lora.LoraLayer):
            for adapter in module.lora_A:
                module.reset_lora_parameters(adapter, True)  # peft's init: A Kaiming-uniform, B zeros
        if any(b.is_meta for b in module.buffers(recurse=False)):
            rebuild_buffers(module)
    return model


def rebuild_buffers(module: nn.Module) -> None:
    """A module's computed buffers (rotary embedding tables) made again on the CPU from its config: they are
    derived from the config, not weights, so the meta build left them empty."""
    config = getattr(module, "config", None)
    if config is None:
        raise ValueError(
            f"{type(module).__name__} has buffers on the meta device and no config to rebuild them"
        )
    fresh = type(module)(config=config)
    for name, buffer in fresh.named_buffers(recurse=False):
        module.register_buffer(name, buffer, persistent=name in module.state_dict())
