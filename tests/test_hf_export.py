"""`behemoth export RUN --hf DIR`: behemoth's GPT (byte and BPE tokenizers, with and without biases) becomes
a GPT-2 directory that transformers loads and that computes the same logits and tokens; an hf run exports
its fine-tuned model back; other models fail in one line."""

import json

import pytest
import torch
from typer.testing import CliRunner

import behemoth
from behemoth.cli.app import app
from behemoth.config import load_config
from behemoth.data.tokenizers import load_run_tokenizer
from behemoth.errors import BehemothError
from behemoth.training.assembly import load_trained_model
from tests.hf_tiny import bpe_tokenizer, kjv_text, tiny_llama, write_text

runner = CliRunner()
SAMPLE = "And God said, Let there be light: and there was light.\n  Naïve café ☃ — 42\t!"


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("text"), verses=1500)


def train_gpt(tmp_path, text, name: str, *extra: str):
    args = [
        f"runs_dir={str(tmp_path / 'runs')!r}",
        f"name={name}",
        "model.name=gpt",
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "data.name=text",
        f"data.path={str(text)!r}",
        "data.block_size=32",
        "data.batch_size=16",
        "data.test_limit=16",
        "train.max_steps=8",
        "train.optimizer=adamw",
        "train.lr=3e-3",
        "train.threads=1",
        *extra,
    ]
    behemoth.train(None, args, progress=False)
    return tmp_path / "runs" / name


def export_cli(run, out):
    result = runner.invoke(app, ["export", str(run), "--hf", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("tokenizer", "bias"),
    [("byte", True), ("bpe", False)],
)
def test_gpt_exports_as_gpt2_with_the_same_logits_and_tokens(tmp_path, text, tokenizer, bias):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = [f"data.tokenizer={tokenizer}", f"model.bias={str(bias).lower()}", "model.dropout=0.1"]
    if tokenizer == "bpe":
        extra.append("data.vocab_size=300")
    run = train_gpt(tmp_path, text, f"gpt-{tokenizer}", *extra)
    out = tmp_path / "hf"
    assert "GPT2LMHeadModel" in export_cli(run, out)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "config.json").read_text())["activation_function"] == "gelu"

    ours_tok = load_run_tokenizer(run)
    theirs_tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    ids = ours_tok.encode(SAMPLE).tolist()
    assert theirs_tok.encode(SAMPLE) == ids
    assert theirs_tok.decode(ids) == SAMPLE == ours_tok.decode(ids)

    ours = load_trained_model(run, load_config(run / "config.toml"))
    theirs = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    x = torch.tensor([ids[:32], ids[-32:]])  # (2, 32)
    with torch.no_grad():
        expected, got = ours(x), theirs(input_ids=x).logits
    assert expected.shape == got.shape == (2, 32, ours_tok.vocab_size)
    assert expected.abs().max() > 0.1  # trained weights, not a degenerate comparison
    assert (expected - got).abs().max().item() <= 1e-5


def test_an_hf_run_exports_its_fine_tuned_model(tmp_path, text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llama = tiny_llama(tmp_path / "llama", 300, tokenizer=bpe_tokenizer(kjv_text(1500), 300), fast=True)
    args = [
        f"runs_dir={str(tmp_path / 'runs')!r}",
        "name=llama",
        "model.name=hf",
        f"model.path={str(llama)!r}",
        "data.name=text",
        f"data.path={str(text)!r}",
        "data.block_size=32",
        "data.batch_size=16",
        "data.test_limit=16",
        "train.max_steps=5",
        "train.optimizer=adamw",
        "train.lr=1e-2",
        "train.threads=1",
    ]
    behemoth.train(None, args, progress=False)
    run, out = tmp_path / "runs" / "llama", tmp_path / "hf"
    assert "LlamaForCausalLM" in export_cli(run, out)
    tuned = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    base = AutoModelForCausalLM.from_pretrained(str(llama), local_files_only=True).eval()
    ours = load_trained_model(run, load_config(run / "config.toml"))
    ids = AutoTokenizer.from_pretrained(str(out), local_files_only=True).encode(SAMPLE)
    assert ids == load_run_tokenizer(run).encode(SAMPLE).tolist()
    x = torch.tensor([ids[:32]])
    with torch.no_grad():
        assert torch.equal(tuned(input_ids=x).logits, ours(x))
        assert not torch.allclose(tuned(input_ids=x).logits, base(input_ids=x).logits)  # it was trained
    # a second export replaces the first
    export_cli(run, out)
    assert (out / "model.safetensors").is_file()
    # the plain export (one safetensors file, checked against the model built on the meta device) works too
    plain = behemoth.export(run)
    assert plain.tensors == len(ours.state_dict()) and plain.path.is_file()


def test_models_without_a_transformers_counterpart_fail_in_one_line(tmp_path):
    behemoth.train(
        None,
        [f"runs_dir={str(tmp_path)!r}", "name=mlp", "model.name=mlp", "data.name=digits", "train.epochs=1"],
        progress=False,
    )
    with pytest.raises(BehemothError, match=r"model.name = 'mlp' has no transformers counterpart"):
        behemoth.export(tmp_path / "mlp", hf=tmp_path / "hf")
    not_export = tmp_path / "notes"
    not_export.mkdir()
    (not_export / "keep.txt").write_text("mine")
    with pytest.raises(BehemothError, match="not a Hugging Face export: refusing"):
        behemoth.export(tmp_path / "mlp", hf=not_export)
