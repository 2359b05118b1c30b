"""behemoth's int8 decode kernel (compression/int8_gemv.c): the stored codes times x rounded to int16, within
that rounding's bound, for one row and for tiles of rows, any K; gradients reach the input; torch.compile
keeps it in a full graph; a quantized GPT decodes on it as on torch's kernel; and the CPUs it is used on."""

import pytest
import torch

from behemoth.compression import int8_kernel, kernel_build
from behemoth.compression.weight_only import Int8WeightOnlyLinear, quantize_weight_only
from behemoth.cpu import cpu_flags
from behemoth.models.gpt import GPT, GPTOptions

RUNS_HERE = bool(kernel_build.runnable(int8_kernel.INSTRUCTION_SETS))


@pytest.fixture
def kernel(monkeypatch):
    """The kernel, asked for by name so that it is also tested on CPUs where torch's is the default."""
    monkeypatch.setenv(int8_kernel.SWITCH, "avx2")
    int8_kernel.library.cache_clear()
    if int8_kernel.library() is None:
        pytest.skip("needs an x86-64 CPU with AVX2 + FMA, and a C compiler")
    yield int8_kernel
    monkeypatch.undo()
    int8_kernel.library.cache_clear()


def quantized(
    out_features: int, in_features: int, seed: int = 0
) -> tuple[torch.nn.Linear, Int8WeightOnlyLinear]:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(in_features, out_features)
    return linear, Int8WeightOnlyLinear.from_linear(linear)


def x_rounding_bound(x: torch.Tensor, layer: Int8WeightOnlyLinear) -> torch.Tensor:
    """(rows, N): the most the kernel's int16 rounding of x (a scale per 128 inputs, the last block possibly
    shorter) can move each output: half a step per input, times |w|."""
    x = x.to(torch.bfloat16).double()
    steps = torch.cat(
        [block.abs().amax(dim=1, keepdim=True).expand_as(block) for block in x.split(128, dim=1)], 1
    )
    return (steps / 32767 / 2) @ layer.dequantized().double().abs().T


@pytest.mark.parametrize("in_features", [768, 300])  # 300: a last block shorter than the kernel's 128
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 17])
def test_the_kernel_multiplies_the_stored_codes_within_its_input_rounding(kernel, in_features, rows):
    linear, ours = quantized(262, in_features)
    assert ours.kernel == "behemoth"
    x = torch.randn(rows, in_features, generator=torch.Generator().manual_seed(1))
    exact = x.to(torch.bfloat16).double() @ ours.dequantized().double().T + linear.bias.detach().double()
    error = (ours(x).double() - exact).abs()
    assert (error <= x_rounding_bound(x, ours) + 1e-5 * exact.abs().max()).all()
    assert error.max() <= 2**-12 * exact.abs().max()  # far below torch's bf16 output rounding (2^-8)


def test_torchs_kernel_rounds_to_bf16_where_ours_keeps_fp32(kernel):
    linear, ours = quantized(96, 256)
    with kernel_build.torch_kernels_only():
        theirs = Int8WeightOnlyLinear.from_linear(linear)
    assert theirs.kernel == "aten" and torch.equal(theirs.weight_int8, ours.weight_int8)
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(2))
    exact = x.to(torch.bfloat16).double() @ ours.dequantized().double().T + linear.bias.detach().double()
    err_ours, err_theirs = ((m(x).double() - exact).abs().max() for m in (ours, theirs))
    assert err_theirs <= 2**-7 * exact.abs().max() and err_ours < err_theirs


def test_gradients_reach_the_input_through_the_dequantized_weight(kernel):
    _, ours = quantized(64, 256)
    x = torch.randn(3, 256, requires_grad=True)
    upstream = torch.randn(3, 64)
    ours(x).backward(upstream)
    expected = upstream @ ours.dequantized()
    assert torch.allclose(x.grad, expected, rtol=0, atol=2**-7 * expected.abs().max())


def test_torch_compile_keeps_the_kernel_in_one_graph(kernel):
    _, ours = quantized(64, 256)
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(1, 256)
    with torch.inference_mode():
        assert torch.equal(compiled(x), ours(x))


def test_a_quantized_gpt_decodes_on_the_kernel_as_on_torchs(kernel):
    gpt = GPT(64, GPTOptions(n_layer=2, n_head=2, n_embd=128, block_size=32)).eval()
    with kernel_build.torch_kernels_only():
        theirs = quantize_weight_only(gpt, 8, 128, head=True)
    ours = quantize_weight_only(gpt, 8, 128, head=True)
    assert {m.kernel for m in ours.modules() if isinstance(m, Int8WeightOnlyLinear)} == {"behemoth"}
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, reference = ours(idx)[0], theirs(idx)[0]
    assert (logits - reference).abs().max() <= 2**-6 * reference.abs().max()  # torch's rounds to bf16


def test_the_kernel_is_the_default_only_on_avx2_cpus_without_avx512(monkeypatch):
    monkeypatch.delenv(int8_kernel.SWITCH, raising=False)
    flags = cpu_flags()
    expected = "avx2" if RUNS_HERE and "avx512f" not in flags else None
    assert int8_kernel.variant() == expected
    monkeypatch.setenv(int8_kernel.SWITCH, "aten")
    assert int8_kernel.variant() is None
    monkeypatch.setenv(int8_kernel.SWITCH, "sse2")
    with pytest.raises(ValueError, match="BEHEMOTH_INT8_KERNEL='sse2'"):
        int8_kernel.variant()
