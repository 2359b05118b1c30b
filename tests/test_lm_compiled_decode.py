"""Compiled decoding (models/compiled_decode.py): the torch.compile'd one-token step over a fixed-size cache
gives the eager tokens, for behemoth's GPT (batched, left-padded prompts; past block_size, where the window
slides; int8 and int4 weight-only layers; two same-shaped models, each its own step) and for a Hugging Face
Llama (transformers' static cache, its steps' attention fused rather than on the flash kernel); `behemoth
generate --compile` prints what it prints without; a model with no cached step says so in one line."""

import pytest
import torch
from typer.testing import CliRunner

from behemoth.cli.app import app
from behemoth.compression.weight_only import quantize_weight_only
from behemoth.models.gpt import GPT, GPTOptions
from behemoth.models.hf import HFCausalLM
from behemoth.models.hf_generate import hf_generate
from behemoth.models.kv_cache import StaticKVCache
from behemoth.models.sampling import sample, sample_cached
from tests.hf_tiny import tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()


def test_static_cache_decodes_the_eager_cache_logits():
    """Without compiling: the fixed-size cache (every slot read, unfilled ones masked) computes what the
    growing cache does, padding included."""
    torch.manual_seed(0)
    model = GPT(256, GPTOptions(n_layer=2, n_head=2, n_embd=32, block_size=32)).eval()
    ids, pad = torch.randint(0, 256, (2, 6)), torch.tensor([0, 3])
    eager, static = model.new_cache(12, pad), model.new_cache(12, pad, static=True)
    assert isinstance(static, StaticKVCache)
    with torch.no_grad():
        logits = [(model.decode(ids, eager), model.decode(ids, static))]
        for step in range(5):
            token = ids[:, step : step + 1]
            logits.append((model.decode(token, eager), model.decode(token, static)))
    for a, b in logits:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert int(static.length) == eager.length == 11


@pytest.fixture
def no_autotune(monkeypatch):
    """Compile without timing kernels (seconds, not a minute, on 2 cores): the step's shapes and cache are
    what these tests check."""
    from behemoth.models import compiled_decode

    monkeypatch.setitem(compiled_decode.INDUCTOR_OPTIONS, "max_autotune", False)


@pytest.mark.parametrize(
    "bits, autotune", [(8, False), (4, False), pytest.param(8, True, marks=pytest.mark.slow)]
)
def test_compiled_weight_only_gpt_decode_gives_the_eager_tokens(bits, autotune, monkeypatch):
    """Two left-padded prompts; 30 tokens > block_size, where the window slides (re-prefilled eagerly, then
    compiled steps again). With autotune (slow: ~40 s of kernel timing on 2 cores) inductor may pick its own
    int8 GEMM template, as `behemoth generate --compile` does; without, aten's int8 kernel in the graph.
    int4 at width 128: behemoth's int4 kernel where this CPU runs it (else torch's)."""
    from behemoth.models import compiled_decode

    monkeypatch.setitem(compiled_decode.INDUCTOR_OPTIONS, "max_autotune", autotune)
    torch.manual_seed(0)
    width = 64 if bits == 8 else 128
    model = GPT(256, GPTOptions(n_layer=1, n_head=2, n_embd=width, block_size=24)).eval()
    quantized = quantize_weight_only(model, bits, 128)
    ids, pad = torch.randint(0, 256, (2, 10)), torch.tensor([0, 4])
    eager = sample_cached(quantized, ids, 20, temperature=0, pad=pad)
    assert torch.equal(sample_cached(quantized, ids, 20, temperature=0, pad=pad, compiled=True), eager)
    assert torch.equal(eager[:1], sample(quantized, ids[:1], 20, temperature=0, context=24))


def test_two_same_shaped_models_each_decode_their_own_tokens(no_autotune):
    """Each compiled step has its weights frozen in and skips guards on the model's modules: a second model
    of the same shape must still get its own step, not the first one's."""
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(GPT(256, GPTOptions(n_layer=1, n_head=2, n_embd=32, block_size=32)).eval())
    eager = [sample_cached(model, ids, 8, temperature=0) for model in models]
    assert not torch.equal(*eager)
    for model, tokens in zip(models, eager, strict=True):
        assert torch.equal(sample_cached(model, ids, 8, temperature=0, compiled=True), tokens)


def test_compiled_hf_generate_gives_the_eager_tokens(tmp_path, no_autotune):
    from transformers import LlamaForCausalLM

    folder = tiny_llama(tmp_path / "llama", 300, context=64)
    model = HFCausalLM(LlamaForCausalLM.from_pretrained(folder).eval(), 256)
    ids = torch.tensor([list(b"In the beginning")])  # (1, 16)
    eager = hf_generate(model, ids, 16, temperature=0)
    assert torch.equal(hf_generate(model, ids, 16, temperature=0, compiled=True), eager)
    assert "forward" not in vars(model.hf)  # the compiled forward is swapped in for the call only
    seeded = [hf_generate(model, ids[:, :5], 8, temperature=1.0, seed=3, compiled=True) for _ in range(2)]
    assert torch.equal(*seeded)  # another prompt length: the prefill is eager, the step graph is reused


def test_compiled_hf_steps_fuse_attention_instead_of_calling_the_flash_kernel(tmp_path, no_autotune):
    """The one-token steps run torch's math attention, fused into the graph: torch's flash-attention kernel
    (~180 us a layer per token on a Llama-1B) runs for the eager prefill alone, once per layer."""
    from torch.profiler import profile
    from transformers import LlamaForCausalLM

    folder = tiny_llama(tmp_path / "llama", 300, context=64)
    model = HFCausalLM(LlamaForCausalLM.from_pretrained(folder).eval(), 256)
    ids = torch.tensor([list(b"In the beginning")])
    hf_generate(model, ids, 6, temperature=0, compiled=True)  # compiles the step
    with profile() as prof:
        hf_generate(model, ids, 6, temperature=0, compiled=True)
    flash = [e for e in prof.events() if e.name == "aten::_scaled_dot_product_flash_attention_for_cpu"]
    assert len(flash) <= model.hf.config.num_hidden_layers  # not once more per layer for each of 5 steps


def test_generate_cli_compile_prints_the_eager_text(tiny_lm_run, no_autotune):
    run, _ = tiny_lm_run
    args = ["generate", str(run), "--prompt", "And God", "--max-new-tokens", "16", "--temperature", "0"]
    eager = runner.invoke(app, args)
    compiled = runner.invoke(app, [*args, "--compile"])
    assert eager.exit_code == 0 and compiled.exit_code == 0, compiled.output
    assert compiled.output == eager.output and eager.output.startswith("And God")
