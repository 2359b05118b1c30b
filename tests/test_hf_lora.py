"""[train.lora] with peft: only the adapters train, are checkpointed and resume exactly; they are saved in
peft's format (PeftModel.from_pretrained loads them) and `behemoth export --merge --hf` folds them in; for a
tiny Llama and for behemoth's GPT on a trained base run."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import behemoth
from behemoth.cli.app import app
from behemoth.config import load_config
from behemoth.errors import BehemothError
from behemoth.runs import RunDir
from behemoth.training.assembly import load_trained_model
from behemoth.training.checkpoint import latest_checkpoint
from tests.hf_tiny import TINY, hf_text_args, lora_corpus

runner = CliRunner()
VOCAB, RANK = 300, 4
TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return (root, *lora_corpus(root, VOCAB))


def lora_args(root, text, llama, name: str, *extra: str) -> list[str]:
    return [
        *hf_text_args(root, text, llama, name),
        f"train.lora.r={RANK}",
        f"train.lora.target_modules={json.dumps(TARGETS)}",
        "train.checkpoint.every_steps=6",
        *extra,
    ]


@pytest.fixture(scope="module")
def lora_run(corpus):
    root, text, llama = corpus
    summary = behemoth.train(
        None,
        lora_args(root, text, llama, "lora", "train.max_steps=12", "train.eval_every_steps=6"),
        progress=False,
    )
    return root / "runs" / "lora", summary


def fresh_llama(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()


def test_only_the_adapters_train_and_are_checkpointed(lora_run):
    run, summary = lora_run
    # r (in + out) per adapted projection: q and v are hidden x hidden in each of the layers
    hidden, layers = TINY["hidden_size"], TINY["num_hidden_layers"]
    expected = layers * len(TARGETS) * RANK * (hidden + hidden)
    assert summary["trainable_parameters"] == expected < summary["parameters"] / 10
    model = load_trained_model(run, load_config(RunDir(run).config_file))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    for weights in (RunDir(run).weights, latest_checkpoint(run) / "model.safetensors"):
        assert sorted(load_file(str(weights))) == sorted(trainable)
    records = map(json.loads, RunDir(run).metrics.read_text().splitlines())
    evals = [r["val.loss"] for r in records if r["kind"] == "eval"]
    assert evals[0] > evals[-1]


def test_peft_loads_the_adapters_and_export_merges_them(lora_run, corpus, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _ = lora_run
    _, _, llama = corpus
    ours = load_trained_model(run, load_config(RunDir(run).config_file))
    x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
        base = fresh_llama(llama)(input_ids=x).logits
        with_peft = PeftModel.from_pretrained(fresh_llama(llama), str(RunDir(run).adapter_dir)).eval()
        assert torch.equal(with_peft(input_ids=x).logits, expected)
    assert (expected - base).abs().max() > 1e-3  # the adapters changed the model

    with pytest.raises(BehemothError, match="pass --merge"):
        behemoth.export(run, hf=tmp_path / "unmerged")
    with pytest.raises(BehemothError, match="--merge --hf DIR"):
        behemoth.export(run)  # its checkpoints hold adapters only
    out = tmp_path / "merged"
    result = runner.invoke(app, ["export", str(run), "--merge", "--hf", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    assert not any("lora" in name for name in merged.state_dict())
    with torch.no_grad():
        # W + (alpha / r) B A folded into one matrix: the same function up to float rounding
        assert (merged(input_ids=x).logits - expected).abs().max() < 1e-4


def test_a_resumed_lora_run_ends_with_the_same_adapters(lora_run, corpus):
    root, text, llama = corpus
    straight, _ = lora_run
    behemoth.train(None, lora_args(root, text, llama, "halves", "train.max_steps=6"), progress=False)
    resumed = root / "runs" / "halves"
    behemoth.train(RunDir(resumed).config(["train.max_steps=12"]), resume=resumed, progress=False)
    want, got = load_file(str(RunDir(straight).weights)), load_file(str(RunDir(resumed).weights))
    assert sorted(want) == sorted(got)
    assert all(torch.equal(want[name], got[name]) for name in want)


def test_lora_on_behemoths_gpt_over_a_trained_base(corpus):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from behemoth.models.gpt import GPT, GPTOptions
    from behemoth.training.checkpoint import load_weights

    root, text, _ = corpus
    gpt = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}
    common = [
        f"runs_dir={str(root / 'runs')!r}",
        "model.name=gpt",
        *(f"model.{key}={value}" for key, value in gpt.items()),
        "data.name=text",
        f"data.path={str(text)!r}",
        "data.block_size=32",
        "data.batch_size=16",
        "data.test_limit=16",
        "train.optimizer=adamw",
        "train.lr=1e-2",
        "train.threads=1",
        "train.max_steps=8",
    ]
    behemoth.train(None, [*common, "name=gpt-base"], progress=False)
    base_run = root / "runs" / "gpt-base"
    lora = [f"train.lora.base_run={str(base_run)!r}", 'train.lora.target_modules=["qkv", "proj", "fc"]']
    summary = behemoth.train(None, [*common, "name=gpt-lora", *lora], progress=False)
    run = root / "runs" / "gpt-lora"
    # per block: qkv C -> 3C, attn.proj C -> C, fc C -> 4C, mlp.proj 4C -> C
    c = gpt["n_embd"]
    assert summary["trainable_parameters"] == gpt["n_layer"] * 8 * ((c + 3 * c) + 2 * c + 2 * (c + 4 * c))

    ours = load_trained_model(run, load_config(RunDir(run).config_file))
    base = GPT(256, GPTOptions(**gpt))
    load_weights(base, RunDir(base_run).weights)
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
        assert (expected - base(x)).abs().max() > 1e-3
        assert torch.equal(PeftModel.from_pretrained(base, str(RunDir(run).adapter_dir)).eval()(x), expected)
    out = root / "gpt-merged"
    made = behemoth.export(run, hf=out, merge=True)
    assert made.architecture == "GPT2LMHeadModel" and made.tokenizer == "byte"
    merged = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    with torch.no_grad():
        assert (merged(input_ids=x).logits - expected).abs().max() < 1e-4


def test_lora_config_errors_are_one_line(corpus):
    root, text, llama = corpus
    with pytest.raises(BehemothError) as err:
        behemoth.train(None, [*lora_args(root, text, llama, "bad"), 'train.lora.target_modules=["nope"]'])
    assert "train.lora.target_modules" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BehemothError, match="train.lora.base_run"):
        load_config(None, ["model.name=gpt", 'train.lora.target_modules=["qkv"]'])
    with pytest.raises(BehemothError, match="train.lora.target_modules"):
        load_config(None, ["model.name=gpt", "train.lora.r=4"])


@pytest.mark.parametrize("head", ["trained", "frozen"])
def test_lora_on_an_image_classifier_with_a_new_head(tmp_path, head):
    """A 5-class ViT on the 10 digits gets a fresh head: trained and saved with modules_to_save, or frozen
    at its random draw, which reloading must draw again (evaluate gives the training run's accuracy)."""
    from tests.hf_tiny import tiny_vit

    vit = tiny_vit(tmp_path / "vit", labels=5)
    extra = ["train.lora.modules_to_save=['classifier']"] if head == "trained" else []
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
            "train.lora.r=4",
            "train.lora.target_modules=['q_proj', 'v_proj']",
            *extra,
        ],
        progress=False,
    )
    if head == "trained":
        assert summary["test"]["acc"] > 0.5  # chance: 0.1
    assert behemoth.evaluate(tmp_path / "runs" / "vit")["acc"] == summary["test"]["acc"]


def test_adapters_are_stored_in_train_param_dtype(corpus):
    from behemoth.spec import DataSpec
    from behemoth.training.assembly import build_run_model

    root, text, llama = corpus
    cfg = load_config(None, [*lora_args(root, text, llama, "bf16"), "train.param_dtype=bf16"])
    model = build_run_model(cfg, DataSpec("language_model", (32,), VOCAB))
    adapters = {p.dtype for name, p in model.named_parameters() if "lora_" in name}
    assert adapters == {p.dtype for p in model.parameters()} == {torch.bfloat16}
