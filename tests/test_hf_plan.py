"""`behemoth plan` of an hf model: full fine-tuning, LoRA and QLoRA from config.json alone (built on meta).
The weight bytes it plans equal the bytes of the models behemoth really builds (a tiny Llama), and a
Llama-7B-shaped config.json plans 6.74e9 parameters with a 4-bit base near 0.5 bytes a weight."""

import json

import pytest
import torch
from typer.testing import CliRunner

import behemoth
from behemoth.cli import app
from behemoth.config import load_config
from behemoth.spec import DataSpec
from behemoth.training.assembly import build_run_model
from behemoth.training.qlora import module_bytes
from tests.hf_tiny import bpe_tokenizer, kjv_text, tiny_llama, write_text

VOCAB = 300
LLAMA_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}


def config_args(model, text, *extra: str) -> list[str]:
    return [
        "model.name=hf",
        f"model.path={str(model)!r}",
        "data.name=text",
        f"data.path={str(text)!r}",
        "data.block_size=32",
        "data.batch_size=2",
        "train.param_dtype=bf16",
        "train.optimizer=adamw",
        "train.lora.r=4",
        "train.lora.target_modules=['q_proj', 'v_proj']",
        *extra,
    ]


def test_planned_weights_are_the_bytes_of_the_built_models(tmp_path):
    text = write_text(tmp_path / "text", verses=300)
    llama = tiny_llama(tmp_path / "llama", VOCAB, tokenizer=bpe_tokenizer(kjv_text(300), VOCAB))
    result = behemoth.plan(load_config(None, config_args(llama, text)), "1GiB")
    rows = {row.mode: row for row in result.rows}
    assert list(rows) == ["full", "lora", "qlora-8bit", "qlora-4bit"]
    spec = DataSpec("language_model", (32,), VOCAB)
    plain = build_run_model(load_config(None, config_args(llama, text)[:-2]), spec)
    assert rows["full"].weights == module_bytes(plain) and rows["full"].trainable == result.parameters
    for mode, extra in (
        ("lora", []),
        ("qlora-8bit", ["train.lora.base_bits=8"]),
        ("qlora-4bit", ["train.lora.base_bits=4"]),
    ):
        model = build_run_model(load_config(None, config_args(llama, text, *extra)), spec)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert rows[mode].weights == module_bytes(model), mode
        assert rows[mode].trainable == trainable and rows[mode].grads == 2 * trainable
        assert rows[mode].optimizer == 2 * 2 * trainable  # adamw: two bf16 slots
    assert len({row.activations for row in rows.values()}) == 1 > 0
    assert result.best.mode == "full"  # 1 GiB holds everything of a tiny model


@pytest.fixture(scope="module")
def llama_7b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama7b")
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))  # no weights at all
    text = write_text(folder / "text", verses=50)
    return folder, text


def test_a_7b_config_plans_from_config_json_alone(llama_7b):
    folder, text = llama_7b
    cfg = load_config(
        None, config_args(folder, text, "data.block_size=128", "data.batch_size=1", "train.lora.r=8")
    )
    result = behemoth.plan(cfg, "8GiB")
    assert result.parameters == 6_738_415_616  # Llama-7B
    rows = {row.mode: row for row in result.rows}
    h, i, layers, vocab = 4096, 11008, 32, 32000
    linear = layers * (4 * h * h + 3 * h * i)
    adapters = layers * 2 * 8 * (h + h)
    assert rows["qlora-4bit"].trainable == adapters
    rest = result.parameters - linear  # embeddings, head and norms stay in bf16
    assert rest == 2 * vocab * h + (2 * layers + 1) * h
    nf4 = rows["qlora-4bit"].weights - 2 * (rest + adapters)
    assert 0.5 < nf4 / linear < 0.52  # 4 bits a weight, plus an int8 scale per 64 weights
    assert 0.5 < rows["qlora-4bit"].weights / result.parameters < 0.6
    assert 1.0 < (rows["qlora-8bit"].weights - 2 * (rest + adapters)) / linear < 1.01
    full = rows["full"]
    assert full.grads == 2 * result.parameters and full.optimizer == 4 * result.parameters
    assert 0 < full.weights - full.grads < 1024  # the rotary frequencies (buffers) besides the parameters
    # 8 GiB: neither full fine-tuning (~51 GiB) nor LoRA on a bf16 base (~13 GiB) fits; QLoRA does
    assert [mode for mode, row in rows.items() if row.total <= 8 * 2**30] == ["qlora-8bit", "qlora-4bit"]
    assert result.best.mode == "qlora-8bit" and "train.lora.base_bits=8" in result.overrides


def test_plan_command_on_an_hf_config(llama_7b, tmp_path):
    folder, text = llama_7b
    toml = tmp_path / "run.toml"
    toml.write_text(
        f'[model]\nname = "hf"\npath = "{folder}"\n[data]\nname = "text"\npath = "{text}"\nblock_size = 128\n'
        'batch_size = 1\n[train]\nparam_dtype = "bf16"\noptimizer = "adamw"\n'
    )
    fits = CliRunner().invoke(app, ["plan", str(toml), "--memory", "6GiB"])
    assert fits.exit_code == 0, fits.output
    assert "qlora-4bit" in fits.output and "recommended: qlora-4bit" in fits.output
    assert "train.lora.base_bits=4" in fits.output
    two = CliRunner().invoke(app, ["plan", str(toml), "--memory", "6GiB", "--nproc", "2"])
    assert two.exit_code == 0 and "--nproc 2 is not planned for hf models" in " ".join(two.output.split())
    none = CliRunner().invoke(app, ["plan", str(toml), "--memory", "2GiB"])
    assert none.exit_code == 1 and "nothing fits" in none.output
    assert torch.get_default_device().type == "cpu"  # the meta build did not leak
