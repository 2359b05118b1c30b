"""Token attributions for language models: a tiny trained GPT continues a prompt greedily and each generated
token is attributed to the prompt's tokens (Captum's feature ablation and layer IG); the scores match a
hand-computed ablation, IG's completeness error is recorded, and the matrix escapes the prompt."""

import json

import pytest
import torch

import behemoth
from behemoth.errors import BehemothError
from behemoth.explanations.generation import target_log_probs
from behemoth.runs import RunDir
from behemoth.training.assembly import load_trained_model

PROMPT = "And God <script>x"  # 18 bytes: fits the 32-token context with 4 new tokens


@pytest.fixture(scope="module")
def record(tiny_lm_run):
    run_dir, _ = tiny_lm_run
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield behemoth.explain(run_dir, prompt=PROMPT, max_new_tokens=4)
    finally:
        torch.set_num_threads(before)


def test_one_row_per_generated_token_one_score_per_prompt_token(record, tiny_lm_run):
    run_dir, _ = tiny_lm_run
    written = json.loads((RunDir(run_dir).explanation("generation") / "attributions.json").read_text())
    prompt_len = len(PROMPT.encode())  # byte tokenizer: one token per byte
    assert written["kind"] == "generation" and written["methods"] == ["feature_ablation", "ig"]
    assert len(written["prompt_ids"]) == prompt_len
    assert len(written["rows"]) == 4 == len(written["generated_ids"])
    for row in written["rows"]:
        for method in ("feature_ablation", "ig"):
            assert len(row["scores"][method]) == prompt_len
            assert all(isinstance(v, float) for v in row["scores"][method])
    # the generated tokens are the greedy continuation
    model = load_trained_model(run_dir, tiny_lm_run[1]).float()
    ids = torch.tensor([list(PROMPT.encode())])
    for token in written["generated_ids"]:
        nxt = int(model(ids)[0, -1].argmax())
        assert nxt == token
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)


def test_feature_ablation_equals_hand_computed_ablation(record, tiny_lm_run):
    run_dir, cfg = tiny_lm_run
    model = load_trained_model(run_dir, cfg).float()
    prompt = torch.tensor(record["prompt_ids"])
    new = torch.tensor(record["generated_ids"])
    full = target_log_probs(model, prompt, new)  # (G,)
    for j in (0, 5, len(prompt) - 1):  # a prompt token at the start, inside, and the last one
        ablated = prompt.clone()
        ablated[j] = ord(" ")  # the baseline token
        drop = full - target_log_probs(model, ablated, new)  # (G,)
        got = torch.tensor([row["scores"]["feature_ablation"][j] for row in record["rows"]])
        assert torch.allclose(got.double(), drop, atol=1e-4), (j, got, drop)
    assert any(abs(v) > 1e-3 for row in record["rows"] for v in row["scores"]["feature_ablation"])


def test_ig_completeness_error_is_finite_and_recorded(record):
    errors = [row["ig_completeness_error"] for row in record["rows"]]
    assert all(e == e and e != float("inf") for e in errors)
    assert record["ig_completeness_max"] == max(errors)
    misses = record["completeness_misses"]
    assert misses["count"] == sum(e >= misses["tolerance"] for e in errors)
    for row in record["rows"]:  # completeness: the row adds up to the change in log p from the baseline
        gap = row["log_prob"] - row["baseline_log_prob"]
        total = sum(row["scores"]["ig"])
        assert abs(total - gap) <= row["ig_completeness_error"] * max(abs(gap), 1e-9) + 1e-6


def test_tokens_html_escapes_the_prompt(record):
    from pathlib import Path

    page = (Path(record["out_dir"]) / "tokens.html").read_text()
    assert "<script>" not in page and "&lt;" in page
    assert page.count("<table>") == 2 and "http" not in page.replace("http-equiv", "")


def test_prompt_too_long_fails_in_one_line(tiny_lm_run):
    with pytest.raises(BehemothError, match="context"):
        behemoth.explain(tiny_lm_run[0], prompt="x" * 30, max_new_tokens=8)
    with pytest.raises(BehemothError, match="--method"):
        behemoth.explain(tiny_lm_run[0], prompt="In", method="lime")


def test_report_and_cli_show_the_matrix(record, tiny_lm_run, tmp_path):
    from typer.testing import CliRunner

    from behemoth.cli.app import app

    run_dir, _ = tiny_lm_run
    result = CliRunner().invoke(
        app, ["explain", str(run_dir), "--prompt", "And God", "--max-new-tokens", "2", "--method", "ig"]
    )
    assert result.exit_code == 0, result.output
    assert "IG completeness error" in result.output and "generated" in result.output
    page = behemoth.report(run_dir, evaluate=False)[0].read_text()
    assert "generated-token attributions" in page and "IG completeness error" in page


def _train(root, name: str, base: str | None, *extra: str):
    from behemoth.config import load_config
    from behemoth.pipeline import run_training
    from behemoth.pipeline.config import resolve_config
    from tests.hf_tiny import write_text

    text = write_text(root / "text", verses=400)
    cfg = load_config(
        resolve_config(base) if base else None,
        [
            f"runs_dir={str(root / 'runs')!r}",
            f"name={name}",
            "data.name=text",
            f"data.path={str(text)!r}",
            "data.block_size=32",
            "data.batch_size=8",
            "data.val_fraction=0.05",
            "data.test_limit=16",
            "train.max_steps=2",
            "train.warmup=0",
            "train.eval_every_steps=2",
            "train.threads=1",
            *extra,
        ],
    )
    run_training(cfg, progress=False)
    return root / "runs" / name, cfg


@pytest.mark.parametrize("kind", ["gpt-bpe", "hf-llama"])
def test_bpe_gpt_and_hf_llama_runs(kind, tmp_path, single_thread):
    """Subword tokens: a GPT on a BPE vocabulary and a tiny Llama (model.name = "hf") with its own
    tokenizer.json; one row per generated token, feature ablation equal to a hand-made ablation."""
    from tests.hf_tiny import bpe_tokenizer, kjv_text, tiny_llama

    if kind == "gpt-bpe":
        extra = ["data.tokenizer=bpe", "data.vocab_size=300", "model.n_layer=1", "model.n_embd=32"]
        extra += ["model.n_head=2", "model.block_size=32"]
    else:
        llama = tiny_llama(tmp_path / "llama", 300, context=64, tokenizer=bpe_tokenizer(kjv_text(400), 300))
        extra = ["model.name=hf", f"model.path={str(llama)!r}", "train.optimizer=adamw"]
    run_dir, cfg = _train(tmp_path, kind, "gpt-text" if kind == "gpt-bpe" else None, *extra)
    record = behemoth.explain(run_dir, prompt="And God said, Let there be light", max_new_tokens=3)
    prompt, new = torch.tensor(record["prompt_ids"]), torch.tensor(record["generated_ids"])
    assert len(new) == 3 == len(record["rows"]) and 2 < len(prompt) < 32  # subwords: fewer than bytes
    assert all(len(row["scores"][m]) == len(prompt) for row in record["rows"] for m in record["methods"])
    assert all(e < float("inf") for e in (row["ig_completeness_error"] for row in record["rows"]))
    model = load_trained_model(run_dir, cfg).float()
    space = _space(run_dir)  # the baseline token
    j = next(i for i, t in enumerate(prompt.tolist()) if t != space)
    ablated = prompt.clone()
    ablated[j] = space
    drop = target_log_probs(model, prompt, new) - target_log_probs(model, ablated, new)
    got = torch.tensor([row["scores"]["feature_ablation"][j] for row in record["rows"]]).double()
    assert torch.allclose(got, drop, atol=1e-4) and float(drop.abs().max()) > 1e-6


def _space(run_dir) -> int:
    from behemoth.data.tokenizers import load_run_tokenizer

    return int(load_run_tokenizer(run_dir).encode(" ")[0])


def test_default_prompt_is_the_start_of_the_validation_text(tiny_lm_run, tmp_path, single_thread):
    from behemoth.config import load_config
    from behemoth.explanations.generation_run import DEFAULT_PROMPT_TOKENS, explain_generation
    from behemoth.training.assembly import load_run_data

    run_dir, _ = tiny_lm_run
    cfg = load_config(run_dir / "config.toml")
    rec = explain_generation(run_dir, cfg, cfg.explain, None, 2, ("feature_ablation",), out_dir=tmp_path)
    val = load_run_data(cfg).splits()["val"].x[0, :DEFAULT_PROMPT_TOKENS].tolist()
    assert rec["prompt_ids"] == val and rec["methods"] == ["feature_ablation"]
    assert len(rec["rows"]) == 2 and rec["completeness_misses"] is None
    assert "ig" not in rec["rows"][0]["scores"]
