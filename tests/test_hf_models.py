"""Local Hugging Face directories as behemoth models (model.name = "hf"): a tiny Llama learns KJV text with
its own tokenizer through `behemoth train`, and the run reloads for evaluate and generate; a tiny ViT learns
the digits through the Python API; bad directories, tokenizers and data fail in one line."""

import json
import shutil

import pytest
from typer.testing import CliRunner

import behemoth
from behemoth.cli.app import app
from behemoth.config import load_config
from behemoth.errors import BehemothError
from behemoth.runs import RunDir
from tests.hf_tiny import bpe_tokenizer, kjv_text, tiny_llama, tiny_vit, write_text

runner = CliRunner()
VOCAB = 400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A slice of the KJV, and a tiny Llama whose tokenizer.json was trained on it."""
    root = tmp_path_factory.mktemp("hf")
    text = write_text(root / "text")
    llama = tiny_llama(root / "llama", VOCAB, context=64, tokenizer=bpe_tokenizer(kjv_text(2500), VOCAB))
    return root, text, llama


def llama_args(root, text, llama, *extra: str) -> list[str]:
    return [
        f"runs_dir={str(root / 'runs')!r}",
        "model.name=hf",
        f"model.path={str(llama)!r}",
        "data.name=text",
        f"data.path={str(text)!r}",
        "data.block_size=32",
        "data.batch_size=16",
        "data.val_fraction=0.05",
        "data.test_limit=64",
        "train.optimizer=adamw",
        "train.lr=3e-3",
        "train.threads=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def llama_run(corpus):
    """`behemoth train llama.toml` for 45 steps, validated every 15."""
    root, text, llama = corpus
    config = root / "llama.toml"
    config.write_text(
        f"""name = "llama"
[data]
name = "text"
path = {str(text)!r}
block_size = 32
batch_size = 16
val_fraction = 0.05
test_limit = 64
[model]
name = "hf"
path = {str(llama)!r}
[train]
optimizer = "adamw"
lr = 3e-3
max_steps = 45
eval_every_steps = 15
threads = 1
"""
    )
    args = [str(config), f"runs_dir={str(root / 'runs')!r}", "--no-progress"]
    result = runner.invoke(app, ["train", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "runs" / "llama"


def test_tiny_llama_learns_text_with_its_own_tokenizer(llama_run, corpus):
    _, _, llama = corpus
    evals = [
        r["val.loss"]
        for r in map(json.loads, RunDir(llama_run).metrics.read_text().splitlines())
        if r["kind"] == "eval"
    ]
    assert len(evals) >= 3 and evals[0] > evals[1] > evals[2]  # steps 15, 30, 45
    spec = RunDir(llama_run).spec()
    assert spec.tokenizer.kind == "hf" and spec.data.num_classes == VOCAB
    # the run holds the model's tokenizer, and its config names the model's directory (absolute)
    assert json.loads(RunDir(llama_run).tokenizer_file.read_text()) == json.loads(
        (llama / "tokenizer.json").read_text()
    )
    cfg = RunDir(llama_run).config()
    assert cfg.model.options["path"] == str(llama.resolve()) and cfg.data.tokenizer == "hf"


def test_the_run_reloads_for_evaluate_and_generate(llama_run):
    result = runner.invoke(app, ["evaluate", str(llama_run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(RunDir(llama_run).summary.read_text())
    evaluated = json.loads(RunDir(llama_run).evaluation.read_text())
    assert evaluated["loss"] == pytest.approx(summary["test"]["loss"], rel=1e-5)
    text = behemoth.generate(llama_run, "And God said", max_new_tokens=12, seed=1)
    assert text.startswith("And God said") and len(text) > len("And God said")
    assert text == behemoth.generate(llama_run, "And God said", max_new_tokens=12, seed=1)


def test_transformers_tokenizer_files_without_tokenizer_json(corpus, tmp_path):
    """A GPT-2 directory with vocab.json + merges.txt only: AutoTokenizer reads them, and the data's ids are
    exactly what transformers' tokenizer gives."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from behemoth.data.tokenizers import load_hf_tokenizer

    root, text, _ = corpus
    tokenizer = bpe_tokenizer(kjv_text(500), 300)
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=300, n_positions=64)
    ).save_pretrained(gpt2)
    tokenizer.model.save(str(gpt2))  # vocab.json, merges.txt
    ours = load_hf_tokenizer(gpt2)
    theirs = AutoTokenizer.from_pretrained(str(gpt2), local_files_only=True)
    sample = kjv_text(40)
    assert ours.encode(sample).tolist() == theirs.encode(sample, add_special_tokens=False)
    assert ours.decode(ours.encode(sample)) == sample
    # transformers adds <|endoftext|> as id 300: a 300-token model cannot take the data's ids
    with pytest.raises(BehemothError, match=r"vocabulary \(300 tokens\) is smaller than the data's \(301"):
        behemoth.train(None, llama_args(root, text, gpt2, "name=small-vocab"), progress=False)


def test_tiny_vit_learns_the_digits(tmp_path):
    vit = tiny_vit(tmp_path / "vit", image_size=8, channels=1, labels=10)
    summary = behemoth.train(
        None,
        [
            f"runs_dir={str(tmp_path / 'runs')!r}",
            "name=vit",
            "model.name=hf",
            f"model.path={str(vit)!r}",
            "data.name=digits",
            "data.batch_size=32",
            "train.epochs=2",
            "train.optimizer=adamw",
            "train.lr=1e-2",
            "train.threads=1",
        ],
        progress=False,
    )
    assert summary["test"]["acc"] > 0.5  # chance is 0.1
    run = tmp_path / "runs" / "vit"
    assert behemoth.evaluate(run)["acc"] == pytest.approx(summary["test"]["acc"])
    # the later stages on an hf image classifier: explain, compress (pruning + dynamic int8), report
    record = behemoth.explain(run, method="ig", samples=2)
    assert record["fidelity"]["summary"]["completeness_error"]["max"] < 0.01
    rows = behemoth.compress(run, "prune=0.5,quant=dynamic", latency=False).rows
    assert rows[-1]["bytes"] < rows[0]["bytes"] / 2 and rows[-1]["acc"] > 0.5
    with pytest.raises(BehemothError, match="compress.quant = 'int8'.*quant = dynamic"):
        behemoth.compress(run, "quant=int8", latency=False)
    html, _ = behemoth.report(run)
    assert all(f'id="{section}"' in html.read_text() for section in ("explain", "compress"))


def one_line_error(args: list[str]) -> str:
    with pytest.raises(BehemothError) as err:
        behemoth.train(None, args, progress=False)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_directories_fail_in_one_line(corpus, tmp_path):
    root, text, llama = corpus
    missing = one_line_error(llama_args(root, text, tmp_path / "nowhere", "name=x"))
    assert "model.path" in missing and "not a directory" in missing
    (tmp_path / "empty").mkdir()
    assert "no config.json" in one_line_error(llama_args(root, text, tmp_path / "empty", "name=x"))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(llama, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    assert "no tokenizer" in one_line_error(llama_args(root, text, no_tokenizer, "name=x"))
    no_weights = tmp_path / "no-weights"
    shutil.copytree(llama, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert "transformers cannot load it" in one_line_error(llama_args(root, text, no_weights, "name=x"))


def test_data_that_do_not_fit_the_model_fail_in_one_line(corpus):
    root, text, llama = corpus
    too_long = one_line_error(llama_args(root, text, llama, "name=x", "data.block_size=100"))
    assert "data.block_size = 100" in too_long and "64 positions" in too_long
    digits = one_line_error(
        llama_args(root, text, llama, "name=x", "data.name=digits", "data.tokenizer=byte")
    )
    assert "causal_lm" in digits and "language_model" in digits
    unknown = one_line_error([*llama_args(root, text, llama, "name=x"), "model.task=segmentation"])
    assert "model.task" in unknown
    cfg = load_config(None, llama_args(root, text, llama, "name=x", "data.tokenizer=byte"))
    assert cfg.data.tokenizer == "byte"  # set on purpose, it is kept: 256 byte ids fit a 400-token model


def test_a_sharded_checkpoint_loads_like_one_file(corpus, tmp_path):
    """save_pretrained's shards (model-0000k-of-0000n.safetensors + an index): transformers reads them
    one by one into a model built on the meta device; the weights are the same as from one file."""
    import torch
    from transformers import AutoModelForCausalLM

    from behemoth.models import build_model
    from behemoth.spec import DataSpec

    _, _, llama = corpus
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(llama)).save_pretrained(sharded, max_shard_size="20KB")
    shutil.copyfile(llama / "tokenizer.json", sharded / "tokenizer.json")
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    spec = DataSpec("language_model", (32,), VOCAB)
    one, many = (build_model("hf", {"path": str(p)}, spec) for p in (llama, sharded))
    x = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad():
        assert torch.equal(one(x), many(x))
