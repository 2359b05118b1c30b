"""Perplexity is a first-class language-model metric: `behemoth evaluate` reports it on the validation and
test text (exp of the mean token cross-entropy, checked against a hand computation), and the compression
table of an LM run shows it beside the file bytes and the decode speed."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from behemoth.cli.app import app
from behemoth.training.assembly import load_run_data, load_trained_model
from behemoth.training.precision import autocast

pytestmark = pytest.mark.usefixtures("single_thread")
runner = CliRunner()


def test_evaluate_reports_perplexity_on_validation_and_test_text(tiny_lm_run, tmp_path):
    run, cfg = tiny_lm_run
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert set(metrics["by_split"]) == {"val", "test"}
    assert "val: perplexity" in result.output and "test: perplexity" in result.output
    data, model = load_run_data(cfg), load_trained_model(run, cfg).eval()
    for name, scores in metrics["by_split"].items():
        split = data.splits()[name]
        with torch.no_grad(), autocast(cfg.train.precision, torch.device("cpu")):
            logits = model(split.x)  # (N, T, V): every token of the split in one batch
        nll = F.cross_entropy(logits.float().flatten(0, 1), split.y.flatten())  # mean over tokens
        assert scores["tokens"] == split.y.numel()
        assert scores["loss"] == pytest.approx(nll.item(), rel=1e-3)
        assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]), rel=1e-6)
        assert 1 < scores["perplexity"] < 256  # better than uniform over the bytes after a few steps
    assert metrics["perplexity"] == metrics["by_split"]["test"]["perplexity"]  # the default split is test


def test_the_compression_table_of_an_lm_run_shows_perplexity(tiny_lm_run, tmp_path):
    run, _ = tiny_lm_run
    out = tmp_path / "m.bhm"
    result = runner.invoke(
        app,
        [
            "compress",
            str(run),
            "compress.latency_repeats=1",
            "--recipe",
            "quant=int8w,code=none",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "token acc" in result.output and "decode tok/s" in result.output
    rows = json.loads((tmp_path / "compress.json").read_text())["rows"]
    assert [r["step"] for r in rows] == ["baseline", "quantized"]
    assert all(r["perplexity"] == pytest.approx(math.exp(r["loss"]), rel=1e-6) for r in rows)
    assert all(r["decode_tokens_per_s"] > 0 for r in rows)
    assert rows[1]["bytes"] == out.stat().st_size < rows[0]["bytes"]
