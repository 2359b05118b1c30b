"""Weight-only int8 / int4 for language models: the kernels match a dequantized float reference, a briefly
trained GPT packs to a .bhm of the expected size, loads back and generates what the in-memory quantized model
generates (CLI included), and bad inputs fail with one line."""

import json

import pytest
import torch
from typer.testing import CliRunner

import behemoth
from behemoth.cli.app import app
from behemoth.compression.pack import PackedFileError, save_packed
from behemoth.compression.pack_format import encode, read_header
from behemoth.compression.rebuild import build_from_packed, shapes_of, to_packed
from behemoth.compression.weight_only import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    WeightOnlyError,
    quantize_weight_only,
)
from behemoth.config import load_config
from behemoth.data.tokenizers import load_run_tokenizer
from behemoth.errors import BehemothError
from behemoth.lm import generate_text, sample_cached
from behemoth.models.gpt import GPT, GPTOptions
from behemoth.pipeline import run_training
from behemoth.pipeline.config import resolve_config
from behemoth.spec import DataSpec
from behemoth.training.assembly import load_trained_model

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()
LAYER_CASES = [("int8", None), ("int4", 32), ("int4", 64), ("int4", 128)]


def quantized_linear(kind: str, group: int | None, linear: torch.nn.Linear) -> torch.nn.Module:
    return (
        Int8WeightOnlyLinear.from_linear(linear)
        if kind == "int8"
        else Int4WeightOnlyLinear.from_linear(linear, group)
    )


@pytest.mark.parametrize("kind,group", LAYER_CASES)
def test_the_bias_is_added_to_the_kernels_product_exactly(kind, group):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 45)
    layer = quantized_linear(kind, group, linear)
    x = torch.randn(2, 3, 128)
    # the module adds its bias with one mixed-dtype add: the numbers of casting the product first. The
    # product is the kernel's own: bf16 from torch's kernels, fp32 from behemoth's int4 kernel
    layer.bias = None
    product, product_bf16 = layer(x), layer(x.bfloat16())
    assert product.dtype == torch.float32 and product_bf16.dtype == torch.bfloat16
    assert torch.equal(product_bf16, product.bfloat16())
    layer.bias = linear.bias.detach().float().clone()
    assert torch.equal(layer(x), product + linear.bias.detach())
    assert torch.equal(layer(x.bfloat16()), product_bf16 + linear.bias.detach().bfloat16())


@pytest.mark.parametrize("kind,group", LAYER_CASES)
def test_the_kernel_computes_the_dequantized_product(kind, group):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 45)  # not a multiple of 16 rows: the int4 layer pads for its kernel
    layer = quantized_linear(kind, group, linear)
    x = torch.randn(3, 5, 256)
    reference = x.bfloat16().float() @ layer.dequantized().T + linear.bias  # fp32 product of what is stored
    y = layer(x)
    assert y.dtype == torch.float32 and y.shape == (3, 5, 45)
    assert torch.allclose(y, reference, rtol=1.6e-2, atol=2e-2)  # the kernel accumulates and rounds in bf16
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    # the stored weight is the float one up to half a quantization step
    w = linear.weight.detach()
    if kind == "int8":  # the stored bf16 scale is the step; it is never below amax / 127 (nothing clips)
        step = layer.scales.float().unsqueeze(1)
        assert (step >= w.abs().amax(1, keepdim=True) / 127).all()
        assert ((layer.dequantized() - w).abs() <= step / 2 * (1 + 1e-5)).all()
    else:
        spread = w.view(45, -1, group).aminmax(dim=-1)
        step = ((spread.max - spread.min) / 15).repeat_interleave(group, 1)
        assert ((layer.dequantized() - w).abs() <= 0.6 * step + 1e-2 * w.abs().max()).all()
    if kind == "int4":  # the codes read back out of the kernel's packed layout pack to the same bytes
        again = Int4WeightOnlyLinear(layer.codes(), layer.stored_scales_and_zeros(), group, linear.bias)
        assert torch.equal(again.weight_int4, layer.weight_int4)


def test_bad_group_and_shapes_are_refused_by_name():
    with pytest.raises(WeightOnlyError, match="compress.group = 48"):
        Int4WeightOnlyLinear.from_linear(torch.nn.Linear(96, 16), 48)
    gpt = GPT(256, GPTOptions(n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(WeightOnlyError, match="blocks.0.attn.qkv: 32 inputs are not a multiple"):
        quantize_weight_only(gpt, 4, 64)


def expected_bytes(model: torch.nn.Module, bits: int, group: int) -> int:
    """Weight bytes of the packed model: low-bit Linear weights with their bf16 scales (and zeros), float32
    for everything else, the tied head once."""
    total = 0
    for name, param in model.named_parameters():  # named_parameters yields a tied weight once
        linear = name.endswith(".weight") and param.ndim == 2 and "emb" not in name
        if not linear:
            total += 4 * param.numel()
        elif bits == 8:
            total += param.numel() + 2 * param.shape[0]
        else:
            total += param.numel() // 2 + 4 * param.shape[0] * (param.shape[1] // group)
    return total


@pytest.mark.parametrize("recipe,bits,group", [("quant=int4w,group=32", 4, 32), ("quant=int8w", 8, 128)])
def test_a_trained_gpt_packs_loads_and_generates_as_in_memory(tiny_lm_run, tmp_path, recipe, bits, group):
    run, cfg = tiny_lm_run
    out = tmp_path / "model.bhm"
    result = behemoth.compress(run, f"{recipe},code=none", [f"compress.output={str(out)!r}"], latency=False)
    float_model = load_trained_model(run, cfg)
    size = out.stat().st_size
    expected = expected_bytes(float_model, bits, group)
    assert expected < size < expected + 6000  # + the header (shapes, stream offsets, CRCs)
    rows = {row["step"]: row for row in result.rows}
    assert rows["quantized"]["bytes"] == size and rows["baseline"]["bytes"] > size
    assert rows["quantized"]["perplexity"] == pytest.approx(rows["baseline"]["perplexity"], rel=0.05)
    memory = quantize_weight_only(float_model, bits, group)
    loaded = behemoth.load_packed(out)
    idx = torch.tensor([list(b"And God said")])
    assert torch.equal(
        sample_cached(loaded, idx, 24, temperature=0), sample_cached(memory, idx, 24, temperature=0)
    )
    text = generate_text(memory, load_run_tokenizer(run), "In the", 24, temperature=0, context=32)
    cli = runner.invoke(
        app,
        [
            "generate",
            str(run),
            "--packed",
            str(out),
            "--prompt",
            "In the",
            "--max-new-tokens",
            "24",
            "--temperature",
            "0",
        ],
    )
    assert cli.exit_code == 0 and cli.output == text + "\n"
    assert json.loads((out.parent / "compress.json").read_text())["layers"]["blocks.0.mlp.fc"]["bits"] == bits


def test_a_quantized_head_is_untied_and_round_trips(tmp_path):
    torch.manual_seed(0)
    options = {"n_layer": 1, "n_head": 2, "n_embd": 64, "block_size": 16}
    gpt = GPT(256, GPTOptions(**options)).eval()
    spec = DataSpec("language_model", (16,), 256)
    quantized = quantize_weight_only(gpt, 4, 64, head=True)
    assert isinstance(quantized.lm_head, Int4WeightOnlyLinear) and isinstance(gpt.lm_head, torch.nn.Linear)
    packed = to_packed(quantized, "gpt", options, spec, shapes=shapes_of(gpt))
    assert packed.tied == {} and packed.tensors["lm_head.weight"].group == 64
    save_packed(tmp_path / "h.bhm", packed, "huffman")
    loaded = behemoth.load_packed(tmp_path / "h.bhm")
    idx = torch.randint(0, 256, (2, 6))
    assert torch.equal(loaded(idx), quantized(idx))  # the same kernels on the same bytes: bit-identical
    tied = to_packed(quantize_weight_only(gpt, 8), "gpt", options, spec, shapes=shapes_of(gpt))
    assert tied.tied == {"lm_head.weight": "tok_emb.weight"} and "lm_head.weight" not in tied.tensors


def test_a_forged_file_and_a_classifier_run_fail_in_one_line(tiny_lm_run, tmp_path):
    torch.manual_seed(0)
    options = {"n_layer": 1, "n_head": 2, "n_embd": 64, "block_size": 16}
    gpt = GPT(256, GPTOptions(**options)).eval()
    packed = to_packed(
        quantize_weight_only(gpt, 8),
        "gpt",
        options,
        DataSpec("language_model", (16,), 256),
        shapes=shapes_of(gpt),
    )
    packed.model_options = {
        **options,
        "n_embd": 32,
        "n_head": 2,
    }  # weights that do not fit the declared model
    save_packed(tmp_path / "bad.bhm", packed, "none")
    with pytest.raises(PackedFileError, match=r"bad.bhm: the weights do not fit the model: size mismatch"):
        behemoth.load_packed(tmp_path / "bad.bhm")
    header = read_header(tmp_path / "bad.bhm", encode(packed, "none"))[0]
    assert {e["kind"] for e in header["tensors"]} == {"int8w", "dense"}
    packed.model_options = options
    packed.tied = {"blocks.0.attn.qkv.weight": "tok_emb.weight"}  # an alias would excuse a missing weight
    del packed.tensors["blocks.0.attn.qkv.weight"]
    with pytest.raises(PackedFileError, match="does not tie"):
        build_from_packed(packed)
    run, _ = tiny_lm_run
    digits = load_config(
        resolve_config("digits"),
        [f"runs_dir={str(tmp_path)!r}", "name=clf", "train.max_steps=2", "train.epochs=1"],
    )
    run_training(digits, progress=False)
    with pytest.raises(BehemothError, match="weight-only quantization for language models") as error:
        behemoth.compress(tmp_path / "clf", "quant=int4w", latency=False)
    assert "\n" not in str(error.value)
    result = runner.invoke(app, ["compress", str(run), "--recipe", "quant=int4w,group=100", "--no-latency"])
    message = str(result.exception)
    assert result.exit_code != 0 and "compress.group = 100" in message and "\n" not in message
