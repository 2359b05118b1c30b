"""`behemoth compress` on Hugging Face causal LMs (model.name = "hf"): weight-only int8w / int4w, magnitude
pruning and dynamic int8 on a tiny GPT-2 (transformers' Conv1D layers, tied head) and a tiny Llama, trained
in full or with LoRA (merged before packing); the .bhm rebuilds the model from its stored config.json
without the model directory, and `generate` / `evaluate --packed` read it."""

import json

import pytest
import torch
from typer.testing import CliRunner

import behemoth
from behemoth.cli.app import app
from behemoth.compression.pack import PackedFileError, load_packed, read_packed, save_packed
from behemoth.compression.pack_weight_only_records import Int4WeightOnly, Int8WeightOnly
from behemoth.compression.weight_only import WEIGHT_ONLY_TYPES
from behemoth.config import load_config
from behemoth.runs import RunDir
from behemoth.training.assembly import load_trained_model
from behemoth.training.lora import merge_lora
from tests.hf_tiny import bpe_tokenizer, hf_run_args, kjv_text, tiny_gpt2, tiny_llama, write_text

runner = CliRunner()
VOCAB = 300
# per architecture: the first attention layer's packed name, and what LoRA adapts
ARCH = {
    "gpt2": ("hf.transformer.h.0.attn.c_attn", ["c_attn"]),
    "llama": ("hf.model.layers.0.self_attn.q_proj", ["q_proj", "v_proj"]),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfc")
    text = write_text(root / "text", verses=1500)
    tokenizer = bpe_tokenizer(kjv_text(1500), VOCAB)
    dirs = {"gpt2": tiny_gpt2(root / "gpt2", VOCAB, tokenizer=tokenizer)}
    dirs["llama"] = tiny_llama(root / "llama", VOCAB, tokenizer=tokenizer)
    return root, text, dirs


@pytest.fixture(scope="module")
def runs(corpus):
    """{(arch, lora): run dir}: each architecture trained in full and with LoRA adapters."""
    root, text, dirs = corpus
    out = {}
    for arch, model_dir in dirs.items():
        out[arch, False] = make_run(root, text, model_dir, f"{arch}-full")
        lora = ["train.lora.r=4", f"train.lora.target_modules={json.dumps(ARCH[arch][1])}", "train.lr=3e-2"]
        out[arch, True] = make_run(root, text, model_dir, f"{arch}-lora", *lora)
    return out


def make_run(root, text, model_dir, name, *extra):
    behemoth.train(None, hf_run_args(root, text, model_dir, name, *extra), progress=False)
    return root / "runs" / name


def trained(run):
    """The run's model as compression sees it: adapters merged, in eval mode."""
    return merge_lora(load_trained_model(run, load_config(RunDir(run).config_file))).eval()


def row(result, step):
    return next(r for r in result.rows if r["step"] == step)


@pytest.mark.parametrize("arch,lora", [(a, lo) for a in ARCH for lo in (False, True)])
def test_weight_only_packs_an_hf_run_and_reloads_it_from_its_config(runs, corpus, arch, lora, tmp_path):
    from transformers import AutoModelForCausalLM

    run = runs[arch, lora]
    layer = ARCH[arch][0]
    int8 = behemoth.compress(run, "quant=int8w", ["compress.code=none"], latency=False)
    int4 = behemoth.compress(
        run, f"quant=int4w,group=32,output={str(tmp_path / 'int4.bhm')!r}", latency=False
    )
    base = row(int8, "baseline")
    assert int4.rows[-1]["bytes"] < int8.rows[-1]["bytes"] < base["bytes"]
    # int8 per channel barely moves the perplexity; int4 in groups of 32 a little more
    assert abs(int8.rows[-1]["perplexity"] / base["perplexity"] - 1) < 0.01
    assert abs(int4.rows[-1]["perplexity"] / base["perplexity"] - 1) < 0.1
    if not lora:  # adapters on a random base learn less; their effect is checked on the logits below
        assert base["perplexity"] < 0.8 * VOCAB  # the run learned something to keep

    packed = read_packed(int8.artifact)
    assert packed.hf_config["model_type"] == arch and packed.runtime == "weight_only"
    assert not any("lora" in name for name in packed.tensors)  # merged, not packed beside the base
    assert isinstance(packed.tensors[f"{layer}.weight"], Int8WeightOnly)
    assert isinstance(read_packed(int4.artifact).tensors[f"{layer}.weight"], Int4WeightOnly)
    if arch == "gpt2":  # the head is the embedding, tied: stored once, in float
        assert packed.tied == {"hf.lm_head.weight": "hf.transformer.wte.weight"}
    else:
        assert packed.tensors["hf.lm_head.weight"].dtype == torch.float32

    # the .bhm needs neither the model directory nor code from it: move the directory away
    _, _, dirs = corpus
    aside = dirs[arch].with_name(f"{arch}-aside")
    dirs[arch].rename(aside)
    try:
        reloaded = load_packed(int8.artifact)
    finally:
        aside.rename(dirs[arch])
    layers = 2 * (4 if arch == "gpt2" else 7)  # every block's Linear (Conv1D) layers, not the head
    assert sum(isinstance(m, WEIGHT_ONLY_TYPES) for m in reloaded.modules()) == layers
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = trained(run)(x), reloaded(x)
        dense = load_packed(behemoth.compress(run, "quant=none", latency=False).artifact)
        before = AutoModelForCausalLM.from_pretrained(str(dirs[arch]), local_files_only=True)(x).logits
    close = (got - want).abs().max()
    assert close < 0.05 * want.abs().max()
    assert close < (before - want).abs().max() / 4  # the trained weights (LoRA merged), not the base's
    assert torch.allclose(dense(x), want, atol=1e-5)  # fp32 packed: the same function
    prompt = "In the beginning"
    same = behemoth.generate(run, prompt, 8, temperature=0)
    assert behemoth.generate(run, prompt, 8, temperature=0, packed=int8.artifact) == same


def test_evaluate_and_generate_read_the_packed_model_from_the_cli(runs):
    run = runs["gpt2", True]
    result = behemoth.compress(run, "quant=int4w,group=32,latency_repeats=1")  # decode timed with HF's cache
    assert all(r["decode_tokens_per_s"] > 0 and r["latency_ms_b1"] > 0 for r in result.rows)
    out = runner.invoke(app, ["evaluate", str(run), "--packed", str(result.artifact)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    written = RunDir(run).packed_evaluation(result.artifact)
    assert str(written) in out.output.replace("\n", "")
    metrics = json.loads(written.read_text())
    assert metrics["perplexity"] == pytest.approx(result.rows[-1]["perplexity"], rel=1e-3)
    assert metrics["perplexity"] != pytest.approx(result.rows[0]["perplexity"], rel=1e-6)  # not the fp32 one
    args = [
        "generate",
        str(run),
        "--packed",
        str(result.artifact),
        "--prompt",
        "And God",
        "--max-new-tokens",
        "6",
    ]
    out = runner.invoke(app, [*args, "--temperature", "0"], catch_exceptions=False)
    assert out.exit_code == 0 and out.output.startswith("And God"), out.output


def test_a_forged_config_in_the_bhm_is_refused_in_one_line(runs, tmp_path):
    result = behemoth.compress(runs["llama", False], "quant=int8w", latency=False)
    packed = read_packed(result.artifact)
    original = dict(packed.hf_config)
    for forged, match in (
        ({**original, "model_type": "my_remote_model"}, "not a model type transformers ships"),
        ({**original, "architectures": ["LlamaForSequenceClassification"]}, "not a causal LM"),
    ):
        packed.hf_config = forged
        save_packed(tmp_path / "forged.bhm", packed)
        with pytest.raises(PackedFileError, match=match):
            load_packed(tmp_path / "forged.bhm")
    # code the config names (auto_map, as remote-code models carry) is never imported: transformers' class
    packed.hf_config = {**original, "auto_map": {"AutoModelForCausalLM": "evil.EvilForCausalLM"}}
    save_packed(tmp_path / "remote.bhm", packed)
    assert type(load_packed(tmp_path / "remote.bhm").hf).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("arch", list(ARCH))
def test_magnitude_pruning_and_dynamic_int8_on_an_hf_run(runs, arch, tmp_path):
    run = runs[arch, False]
    pruned = behemoth.compress(
        run, f"prune=0.5,schedule=oneshot,retrain_epochs=0,output={str(tmp_path / 'p.bhm')!r}", latency=False
    )
    base, step = row(pruned, "baseline"), row(pruned, "pruned")
    assert step["bytes"] < base["bytes"]
    assert 1 < step["perplexity"] < 2 * base["perplexity"]
    reloaded = load_packed(pruned.artifact)
    layer = reloaded.get_submodule(ARCH[arch][0])
    assert isinstance(layer, torch.nn.Linear)  # GPT-2's Conv1D pruned as the Linear it is
    assert 0.2 < float((layer.weight == 0).float().mean()) < 0.9  # global magnitude: about half
    dynamic = behemoth.compress(run, f"quant=dynamic,output={str(tmp_path / 'd.bhm')!r}", latency=False)
    assert dynamic.rows[-1]["bytes"] < base["bytes"] / 1.5
    assert abs(dynamic.rows[-1]["perplexity"] / base["perplexity"] - 1) < 0.02


@pytest.mark.parametrize(
    "recipe,field",
    [
        ("quant=int8", "compress.quant"),
        ("quant=qat", "compress.quant"),
        ("structured=0.25", "compress.structured"),
    ],
)
def test_recipes_that_cannot_apply_fail_in_one_line(runs, recipe, field):
    run = runs["gpt2", False]
    out = runner.invoke(
        app, ["compress", str(run), "--recipe", f"{recipe},finetune_epochs=1", "--no-latency"]
    )
    message = str(out.exception)
    assert out.exit_code != 0 and message.startswith(field) and "\n" not in message, message
