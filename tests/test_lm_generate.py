"""Language models end to end: a GPT learns the KJV (falling validation loss), generates text through the CLI,
with byte and BPE tokenizers; the RNN baseline trains on the same data; MFU is logged; sampling is exact."""

import json

import pytest
import torch
from typer.testing import CliRunner

from behemoth.cli.app import app
from behemoth.config import load_config
from behemoth.data.text import split_text
from behemoth.lm import next_token, sample
from behemoth.models.gpt import GPT, GPTOptions
from behemoth.pipeline import run_training
from behemoth.pipeline.config import resolve_config
from behemoth.spec import DataSpec
from behemoth.training.mfu import train_flops_per_sample

runner = CliRunner()
TINY_GPT = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "model.block_size=64",
    "model.dropout=0.0",
]


def records(run, kind):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    """A tiny GPT trained for 150 steps on KJV bytes, validated every 50 steps."""
    runs = tmp_path_factory.mktemp("lm")
    cfg = load_config(
        resolve_config("gpt-text"),
        [
            f"runs_dir={str(runs)!r}",
            "name=tiny",
            "data.block_size=64",
            "data.batch_size=32",
            "data.val_fraction=0.002",
            "data.test_limit=64",
            *TINY_GPT,
            "train.max_steps=150",
            "train.warmup=10",
            "train.lr=3e-3",
            "train.eval_every_steps=50",
            "train.log_every=25",
        ],
    )
    summary = run_training(cfg, progress=False)
    return runs / "tiny", summary


def test_gpt_learns_the_bible_and_validation_loss_falls(gpt_run):
    run, summary = gpt_run
    evals = [r["val.loss"] for r in records(run, "eval")]
    assert len(evals) >= 3 and evals[0] > evals[1] > evals[2]  # steps 50, 100, 150
    assert evals[-1] < 2.6 < 5.545  # uniform over 256 bytes would be ln(256) = 5.545
    assert summary["val"]["perplexity"] == pytest.approx(
        torch.tensor(summary["val"]["loss"]).exp().item(), rel=1e-5
    )
    assert summary["test"]["perplexity"] < 14


def test_mfu_is_measured_and_logged(gpt_run):
    run, _ = gpt_run
    train = records(run, "train")
    assert train and all(0 < r["mfu"] < 2 and r["peak_gflops"] > 1 and r["model_gflops"] > 0 for r in train)
    for r in train:  # mfu is the achieved model FLOP rate over the measured matmul peak
        assert r["mfu"] == pytest.approx(r["model_gflops"] / r["peak_gflops"], rel=1e-6)


def test_generate_cli_continues_the_prompt_reproducibly(gpt_run):
    run, _ = gpt_run
    args = [
        "generate",
        str(run),
        "--prompt",
        "And God said",
        "--max-new-tokens",
        "80",
        "--top-k",
        "10",
        "--seed",
        "3",
    ]
    first, again = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    text = first.output.rstrip("\n")
    assert text.startswith("And God said") and len(text.encode()) == len("And God said") + 80
    assert first.output == again.output  # same seed, same text
    other = runner.invoke(app, args[:-1] + ["4"])
    assert other.output != first.output
    # a trained model writes mostly words it saw: most of the space-separated pieces are lower-case letters
    words = text.split()
    assert sum(w.strip(",.;:").isalpha() for w in words) >= 0.6 * len(words)


def test_generate_refuses_a_classifier_and_an_empty_prompt(gpt_run, tmp_path):
    run, _ = gpt_run
    assert "--prompt is empty" in str(runner.invoke(app, ["generate", str(run), "--prompt", ""]).exception)
    cfg = load_config(
        resolve_config("digits"),
        [f"runs_dir={str(tmp_path)!r}", "name=clf", "train.max_steps=2", "train.epochs=1"],
    )
    run_training(cfg, progress=False)
    result = runner.invoke(app, ["generate", str(tmp_path / "clf")])
    assert result.exit_code != 0 and "classification run" in str(result.exception)


def test_bpe_run_saves_its_tokenizer_and_generates_with_it(tmp_path):
    from behemoth.data import sources

    lines = sources.kjv_jsonl().read_text(encoding="utf-8").splitlines()[:600]
    text = "\n".join(json.loads(line)["text"] for line in lines)
    (tmp_path / "genesis.txt").write_text(text, encoding="utf-8")
    cfg = load_config(
        resolve_config("gpt-bpe"),
        [
            f"runs_dir={str(tmp_path)!r}",
            "name=bpe",
            "data.name=text",
            f"data.path={str(tmp_path / 'genesis.txt')!r}",
            "data.vocab_size=320",
            "data.block_size=32",
            "data.batch_size=16",
            *TINY_GPT,
            "train.max_steps=5",
            "train.warmup=0",
            "train.eval_every_steps=5",
        ],
    )
    summary = run_training(cfg, progress=False)
    run = tmp_path / "bpe"
    meta = json.loads((run / "spec.json").read_text())["meta"]
    assert (
        meta["tokenizer"] == "bpe" and meta["vocab_size"] == 320 and (run / meta["tokenizer_file"]).is_file()
    )
    assert summary["steps"] == 5
    result = runner.invoke(
        app, ["generate", str(run), "--prompt", "And the", "--max-new-tokens", "12", "--seed", "0"]
    )
    assert result.exit_code == 0, result.output
    from behemoth.data.tokenizers import train_bpe

    tok = train_bpe(split_text(text, 0.1)["train"], 320)  # the very tokenizer the run trained and saved
    out = result.output.rstrip("\n")
    assert (
        out.startswith("And the") and len(tok.encode(out)) >= 12
    )  # 2 prompt tokens + 12 sampled, re-encoded


def test_rnn_baseline_trains_on_the_same_text_and_generates(tmp_path):
    cfg = load_config(
        resolve_config("rnn-text"),
        [
            f"runs_dir={str(tmp_path)!r}",
            "name=rnn",
            "data.block_size=32",
            "data.val_fraction=0.001",
            "data.test_limit=32",
            "model.hidden_size=64",
            "train.max_steps=30",
            "train.warmup=0",
            "train.eval_every_steps=10",
            "train.lr=1e-2",
        ],
    )
    run_training(cfg, progress=False)
    evals = [r["val.loss"] for r in records(tmp_path / "rnn", "eval")]
    assert evals[-1] < evals[0] < 5.6
    assert "mfu" in records(tmp_path / "rnn", "train")[-1]  # 6N per token covers the LSTM too
    result = runner.invoke(
        app,
        ["generate", str(tmp_path / "rnn"), "--prompt", "In", "--max-new-tokens", "20", "--temperature", "0"],
    )
    assert result.exit_code == 0 and len(result.output.rstrip("\n").encode()) == 22
    refused = runner.invoke(app, ["generate", str(tmp_path / "rnn"), "--compile"])
    assert refused.exit_code != 0 and "no one-token step to compile" in str(refused.exception)


# sampling, as pure functions


def test_sampling_rules():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5]])
    assert next_token(logits, temperature=0).item() == 1  # greedy
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([next_token(logits, 1.0, top_k=2, generator=g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {1, 3}  # top-2 keeps only the two likeliest
    cold = torch.cat([next_token(logits, 0.05, generator=g) for _ in range(100)])
    assert (cold == 1).float().mean() > 0.99  # low temperature concentrates on the argmax
    with pytest.raises(ValueError, match="temperature"):
        sample(torch.nn.Identity(), torch.zeros(1, 1, dtype=torch.long), 1, temperature=-1)


def test_sample_crops_the_context_and_matches_a_manual_greedy_loop():
    torch.manual_seed(0)
    model = GPT(256, GPTOptions(n_layer=1, n_head=2, n_embd=32, block_size=8)).train()
    idx = torch.randint(0, 256, (2, 5))
    out = sample(model, idx, 10, temperature=0, context=8)  # 5 + 10 > block_size: cropped, no error
    assert out.shape == (2, 15) and torch.equal(out[:, :5], idx) and model.training  # training mode restored
    manual = idx
    model.eval()
    for _ in range(10):
        manual = torch.cat([manual, model(manual[:, -8:])[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, manual)
    assert torch.equal(model.generate(idx, 10, temperature=0), manual)


def test_flops_formula_for_a_gpt():
    model = GPT(256, GPTOptions(n_layer=3, n_head=2, n_embd=32, block_size=16))
    n = sum(p.numel() for p in model.parameters()) - model.pos_emb.weight.numel()  # tied tok_emb counts once
    per_sample = train_flops_per_sample(model, DataSpec("language_model", (16,), 256))
    assert per_sample == 16 * (6 * n + 12 * 3 * 16 * 32)
    from behemoth.models.registry import build_model

    cnn = build_model("cnn", {}, DataSpec("classification", (1, 28, 28), 10))
    assert train_flops_per_sample(cnn, DataSpec("classification", (1, 28, 28), 10)) is None
