"""QLoRA (train.lora.base_bits): a tiny Llama's frozen Linears held as NF4 (torchao) or int8, the adapters
the only thing that trains, the quantized model close to the bf16 one, and a resumed run exact."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import behemoth
from behemoth.config import load_config
from behemoth.runs import RunDir
from behemoth.spec import DataSpec
from behemoth.training.assembly import build_run_model, load_trained_model
from behemoth.training.qlora import Int8Linear, NF4Linear, module_bytes
from tests.hf_tiny import TINY, hf_text_args, lora_corpus

VOCAB = 300
KINDS = {4: NF4Linear, 8: Int8Linear}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    torch.set_num_threads(1)  # conftest's torch_threads_restored gives the thread count back


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora")
    return (root, *lora_corpus(root, VOCAB))


def args(root, text, llama, name: str, *extra: str) -> list[str]:
    return [
        *hf_text_args(root, text, llama, name),
        "train.param_dtype=bf16",
        "train.lora.r=4",
        "train.lora.target_modules=['q_proj', 'v_proj']",
        "train.checkpoint.every_steps=4",
        *extra,
    ]


def build(corpus, *extra: str) -> nn.Module:
    root, text, llama = corpus
    cfg = load_config(None, args(root, text, llama, "m", *extra))
    return build_run_model(cfg, DataSpec("language_model", (32,), VOCAB))


def base_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The decoder layers' base Linears (under peft's base_layer for the adapted ones), by name."""
    return {
        name: m
        for name, m in model.named_modules()
        if ".layers." in name and "lora_" not in name and isinstance(m, (nn.Linear, NF4Linear, Int8Linear))
    }


@pytest.mark.parametrize("bits", [4, 8])
def test_the_base_is_quantized_and_only_adapters_get_gradients(corpus, bits):
    plain, quantized = build(corpus), build(corpus, f"train.lora.base_bits={bits}")
    before, after = base_linears(plain), base_linears(quantized)
    # per layer: q, k, v, o, gate, up, down
    assert sorted(before) == sorted(after) and len(after) == TINY["num_hidden_layers"] * 7
    assert all(type(m) is nn.Linear for m in before.values())
    assert all(type(m) is KINDS[bits] for m in after.values())
    ratio = sum(map(module_bytes, after.values())) / sum(map(module_bytes, before.values()))
    # bf16 is 2 bytes a weight; NF4 0.5 plus block scales, int8 1 plus one scale per output channel
    assert ratio < {4: 0.3, 8: 0.55}[bits]
    saved = sum(map(module_bytes, before.values())) - sum(map(module_bytes, after.values()))
    assert module_bytes(plain) - module_bytes(quantized) == saved  # embeddings, norms, head unchanged
    head = quantized.hf.get_output_embeddings()
    assert type(head) is nn.Linear and head.weight.dtype == torch.bfloat16

    x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    quantized(x).float().logsumexp(-1).mean().backward()
    with_grad = {name for name, p in quantized.named_parameters() if p.grad is not None}
    trainable = {name for name, p in quantized.named_parameters() if p.requires_grad}
    assert with_grad == trainable and all("lora_" in name for name in trainable)
    # lora_B starts at zero (so lora_A's gradient is zero); layer 0's lora_B gets its gradient back through
    # layer 1's quantized Linears
    assert all(p.grad.abs().sum() > 0 for name, p in quantized.named_parameters() if "lora_B" in name)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_quantized_forward_is_close_to_bf16(corpus, bits):
    plain, quantized = build(corpus), build(corpus, f"train.lora.base_bits={bits}")
    x = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = plain.eval()(x).float(), quantized.eval()(x).float()
    # relative RMS error of the logits: measured 4.7% for NF4 (16 levels), 0.56% for int8 (255 levels)
    error = ((got - want).pow(2).mean() / want.pow(2).mean()).sqrt().item()
    assert 0 < error < {4: 0.1, 8: 0.015}[bits]  # > 0: it is really quantized
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()  # measured 0.91 and 1.0
    assert agree > {4: 0.8, 8: 0.97}[bits]


def test_qlora_trains_and_resumes_exactly(corpus):
    from transformers import AutoModelForCausalLM

    root, text, llama = corpus
    q = "train.lora.base_bits=4"
    summary = behemoth.train(
        None, args(root, text, llama, "q", q, "train.max_steps=8", "train.eval_every_steps=4"), progress=False
    )
    straight = root / "runs" / "q"
    records = [json.loads(line) for line in RunDir(straight).metrics.read_text().splitlines()]
    evals = [r["val.loss"] for r in records if r["kind"] == "eval"]
    assert evals[-1] < evals[0]
    assert summary["trainable_parameters"] < summary["parameters"] / 10
    assert sorted(load_file(str(RunDir(straight).weights))) == sorted(
        n for n, p in build(corpus, q).named_parameters() if p.requires_grad
    )

    # --merge folds the adapters into the dequantized base: the function that was trained
    behemoth.export(straight, hf=root / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(str(root / "merged"), local_files_only=True).eval()
    x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = load_trained_model(straight, load_config(RunDir(straight).config_file))(x).float()
        diff = (merged(input_ids=x).logits.float() - ours).abs().max().item()
    assert diff < 0.05  # bf16 rounding of W + (alpha / r) B A

    behemoth.train(None, args(root, text, llama, "h", q, "train.max_steps=4"), progress=False)
    resumed = root / "runs" / "h"
    behemoth.train(RunDir(resumed).config(["train.max_steps=8"]), resume=resumed, progress=False)
    want, got = load_file(str(RunDir(straight).weights)), load_file(str(RunDir(resumed).weights))
    assert sorted(want) == sorted(got) and all(torch.equal(want[n], got[n]) for n in want)
