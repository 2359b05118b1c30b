"""behemoth's int4 decode kernel (compression/int4_gemv.c): the same products as torch's int4 kernel on the
same codes, for one row and for tiles of rows, every group size; gradients reach the input; torch.compile
keeps it in a full graph; and where it cannot run, torch's kernel takes over."""

import os
import stat

import pytest
import torch

from behemoth.compression import int4_kernel, kernel_build
from behemoth.compression.weight_only import Int4WeightOnlyLinear, quantize_weight_only
from behemoth.models.gpt import GPT, GPTOptions

needs_kernel = pytest.mark.skipif(
    int4_kernel.library() is None,
    reason="needs an x86-64 CPU with AVX-512 BF16 or AVX2 + FMA, and a C compiler",
)


# every build of the kernel this CPU runs (an AVX-512 BF16 machine runs the AVX2 build too)
RUNNABLE = kernel_build.runnable(int4_kernel.INSTRUCTION_SETS)


@pytest.fixture(params=RUNNABLE or [None])
def instruction_set(request, monkeypatch):
    """The kernel built for one instruction set (BEHEMOTH_INT4_KERNEL names it)."""
    if request.param is None or int4_kernel.library() is None:
        pytest.skip("needs an x86-64 CPU with AVX-512 BF16 or AVX2 + FMA, and a C compiler")
    monkeypatch.setenv(int4_kernel.SWITCH, request.param)
    int4_kernel.library.cache_clear()
    yield request.param
    monkeypatch.undo()
    int4_kernel.library.cache_clear()


def layer(out_features: int, in_features: int, group: int, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features)


def test_codes_pack_into_the_kernels_layout_and_back():
    codes = torch.randint(0, 16, (40, 384), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = int4_kernel.pack(codes)
    assert packed.shape == (40, 192) and packed.dtype == torch.uint8
    assert torch.equal(int4_kernel.unpack(packed), codes)
    # lane i of a block holds codes i, 32 + i, 64 + i, 96 + i, lowest nibble first
    lane0 = int(packed[0, 0]) | int(packed[0, 1]) << 8
    assert [(lane0 >> shift) & 15 for shift in (0, 4, 8, 12)] == [int(codes[0, j]) for j in (0, 32, 64, 96)]


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 17])
def test_the_kernel_multiplies_like_torchs_int4_kernel(group, rows, instruction_set):
    linear = layer(262, 768, group)  # 262 outputs: not a multiple of 16, as GPT-2's head is not
    with int4_kernel.torch_kernel_only():
        theirs = Int4WeightOnlyLinear.from_linear(linear, group)
    ours = Int4WeightOnlyLinear.from_linear(linear, group)
    assert (ours.kernel, theirs.kernel) == ("behemoth", "aten")
    assert torch.equal(ours.codes(), theirs.codes())
    assert torch.equal(ours.stored_scales_and_zeros(), theirs.stored_scales_and_zeros())
    x = torch.randn(rows, 768, generator=torch.Generator().manual_seed(1))
    exact = x.to(torch.bfloat16).double() @ theirs.dequantized().double().T + linear.bias.detach().double()
    y_ours, y_theirs = ours(x).double(), theirs(x).double()
    scale = exact.abs().max()
    # torch's kernel rounds its output to bf16 (relative 2^-8); ours sums and returns fp32 (1e-5), and the
    # AVX2 build multiplies x rounded to int8 with a scale per 128 inputs: |error| <= half a step per input,
    # times |(q - 8) s| (the zero term uses x itself)
    allowed = torch.full((rows, 1), 1e-5 * scale, dtype=torch.float64)
    if instruction_set == "avx2":
        blocks = x.to(torch.bfloat16).double().view(rows, -1, 128)
        half_step = (blocks.abs().amax(dim=-1, keepdim=True) / 127 / 2).expand_as(blocks).reshape(rows, -1)
        scales = torch.repeat_interleave(ours.stored_scales_and_zeros()[..., 0].double().T, group, dim=1)
        allowed = allowed + half_step @ ((ours.codes().double() - 8) * scales).abs().T  # (rows, N)
    assert (y_theirs - exact).abs().max() <= 2**-7 * scale
    assert ((y_ours - exact).abs() <= allowed).all()
    if instruction_set == "avx2":  # the bound is not loose: the rounding shows, about as large as torch's
        assert 0.1 * (y_theirs - exact).abs().max() < (y_ours - exact).abs().max() <= 2**-6 * scale
    else:  # bf16 x as given, fp32 sums
        assert (y_ours - exact).abs().max() < (y_theirs - exact).abs().max()


@needs_kernel
def test_gradients_reach_the_input_through_the_dequantized_weight():
    ours = Int4WeightOnlyLinear.from_linear(layer(64, 256, 128), 128)
    x = torch.randn(3, 256, requires_grad=True)
    upstream = torch.randn(3, 64)
    ours(x).backward(upstream)
    expected = upstream @ ours.dequantized()
    assert torch.allclose(x.grad, expected, rtol=0, atol=2**-7 * expected.abs().max())


@needs_kernel
def test_torch_compile_keeps_the_kernel_in_one_graph():
    ours = Int4WeightOnlyLinear.from_linear(layer(64, 256, 128), 128)
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(1, 256)
    with torch.inference_mode():
        assert torch.equal(compiled(x), ours(x))


@needs_kernel
def test_a_quantized_gpt_runs_on_the_kernel_as_on_torchs():
    gpt = GPT(64, GPTOptions(n_layer=2, n_head=2, n_embd=128, block_size=32)).eval()
    with int4_kernel.torch_kernel_only():
        theirs = quantize_weight_only(gpt, 4, 128, head=True)
    ours = quantize_weight_only(gpt, 4, 128, head=True)
    layers = [m for m in ours.modules() if isinstance(m, Int4WeightOnlyLinear)]
    assert len(layers) == 2 * 4 + 1 and {m.kernel for m in layers} == {"behemoth"}
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, reference = ours(idx)[0], theirs(idx)[0]
    assert (logits - reference).abs().max() <= 2**-6 * reference.abs().max()  # torch's rounds to bf16


def test_the_best_build_the_cpu_runs_is_chosen_and_a_bad_switch_is_named(monkeypatch):
    monkeypatch.delenv(int4_kernel.SWITCH, raising=False)
    assert int4_kernel.variant() == (RUNNABLE[0] if RUNNABLE else None)
    monkeypatch.setenv(int4_kernel.SWITCH, "avx3")
    with pytest.raises(ValueError, match="BEHEMOTH_INT4_KERNEL='avx3'"):
        int4_kernel.variant()


def test_where_the_kernel_cannot_run_torchs_kernel_does(monkeypatch):
    monkeypatch.setenv(int4_kernel.SWITCH, "aten")
    int4_kernel.library.cache_clear()
    try:
        assert int4_kernel.library() is None and not int4_kernel.fits(64, 256, 128)
        built = Int4WeightOnlyLinear.from_linear(layer(64, 256, 128), 128)
        assert built.kernel == "aten" and built(torch.randn(2, 256)).shape == (2, 64)
    finally:
        monkeypatch.undo()
        int4_kernel.library.cache_clear()


@needs_kernel
def test_the_compiled_library_is_cached_in_a_private_user_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    instruction_set = int4_kernel.variant()
    built = kernel_build.build(int4_kernel.SOURCE, os.environ.get("CC") or "gcc", instruction_set)
    assert instruction_set in built.name and built.suffix == ".so"
    assert built.parent == tmp_path / "behemoth" / "kernels"
    assert stat.S_IMODE(built.parent.stat().st_mode) == 0o700
    # the second call compiles nothing
    assert kernel_build.build(int4_kernel.SOURCE, os.environ.get("CC") or "gcc", instruction_set) == built
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no temporary file left


def test_a_cache_others_could_write_to_is_not_used(tmp_path, monkeypatch):
    shared = tmp_path / "behemoth" / "kernels"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    private = kernel_build.cache_dir()
    assert private != shared and stat.S_IMODE(private.stat().st_mode) == 0o700
