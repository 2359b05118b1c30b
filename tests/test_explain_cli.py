"""`behemoth explain` end to end on small trained runs: image (digits), text (tiny GPT), table (wine CSV)."""

import html
import json
import re
import subprocess

import pytest
from typer.testing import CliRunner

from behemoth.cli import app
from behemoth.config import load_config
from behemoth.errors import BehemothError, ConfigError
from behemoth.pipeline import run_training
from behemoth.pipeline.config import resolve_config
from tests.conftest import behemoth_cmd, subprocess_env

runner = CliRunner()
METHODS = ("ig", "saliency", "gradient_shap", "kernel_shap", "lime", "occlusion")


def train(recipe: str, runs_dir, *overrides: str):
    cfg = load_config(resolve_config(recipe), [f"runs_dir={str(runs_dir)!r}", *overrides])
    run_training(cfg, progress=False)
    return runs_dir / cfg.name


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    return train("digits", tmp_path_factory.mktemp("explain"), "train.epochs=5")


@pytest.fixture(scope="session")
def text_run(tmp_path_factory):
    return train(
        "gpt-text",
        tmp_path_factory.mktemp("explain"),
        "train.max_steps=20",
        "train.warmup=0",
        "model.n_layer=1",
        "model.n_embd=32",
        "data.block_size=32",
        "model.block_size=32",
        "train.eval_every_steps=1000",
        "train.precision='fp32'",
        "model.dropout=0.0",
    )


@pytest.fixture(scope="session")
def table_run(tmp_path_factory):
    from sklearn.datasets import load_wine

    root = tmp_path_factory.mktemp("explain")
    frame = load_wine(as_frame=True).frame
    frame.to_csv(root / "wine.csv", index=False)
    return train(
        "digits",
        root,
        "name=wine",
        "data.name='table'",
        f"data.path={str(root / 'wine.csv')!r}",
        "data.label_column='target'",
        "model.hidden=[32]",
        "train.epochs=10",
    )


def explain(*args: str):
    result = runner.invoke(app, ["explain", *map(str, args), "--no-progress"])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_images_writes_a_grid_and_fidelity(digits_run, method):
    result = explain(digits_run, "--method", method, "--samples", "3", "explain.n_samples=32")
    out = digits_run / "explain" / method
    record = json.loads((out / "attributions.json").read_text())
    assert (out / "grid.png").stat().st_size > 10_000 and record["picture"] == "grid.png"
    assert len(record["attributions"]) == 3 and len(record["attributions"][0][0]) == 8  # (3, 1, 8, 8)
    summary = record["fidelity"]["summary"]
    assert set(summary) == {
        "completeness_error",
        "deletion_auc",
        "insertion_auc",
        "infidelity",
        "randomization_spearman",
    }
    assert all(summary[k]["mean"] is not None for k in summary)
    assert "deletion_auc" in result.output and "written" in result.output
    if method == "ig":
        assert summary["completeness_error"]["max"] < 0.01 and min(record["n_steps_used"]) >= 32
        assert record["baseline"].startswith("the black image")


def test_target_label_explains_the_true_class(digits_run):
    explain(
        digits_run,
        "--method",
        "saliency",
        "--samples",
        "4",
        "--target",
        "label",
        "explain.sanity_check=false",
    )
    record = json.loads((digits_run / "explain" / "saliency" / "attributions.json").read_text())
    assert (
        record["targets"] == record["labels"]
        and record["fidelity"]["summary"]["randomization_spearman"] is None
    )


def test_text_model_colours_tokens(text_run):
    explain(text_run, "--samples", "2")  # method from [explain]: ig
    out = text_run / "explain" / "ig"
    page = (out / "tokens.html").read_text()
    assert page.count('<span style="background:rgba(') >= 2 * 32
    record = json.loads((out / "attributions.json").read_text())
    assert (
        len(record["attributions"][0]) == 32
        and record["fidelity"]["summary"]["completeness_error"]["max"] < 0.01
    )
    assert record["fidelity"]["summary"]["infidelity"] is None


def test_bpe_text_model_shows_its_own_tokens(tmp_path_factory):
    """A BPE run is explained with its tokenizer: tokens are decoded pieces of text, the baseline is its
    space."""
    from behemoth.data.tokenizers import load_run_tokenizer

    run_dir = train(
        "gpt-bpe",
        tmp_path_factory.mktemp("explain"),
        "train.max_steps=5",
        "train.warmup=0",
        "model.n_layer=1",
        "model.n_embd=32",
        "data.block_size=16",
        "model.block_size=16",
        "data.vocab_size=400",
        "train.eval_every_steps=1000",
        "train.precision='fp32'",
        "data.train_limit=64",
        "data.test_limit=8",
    )
    explain(run_dir, "--samples", "1")
    tokenizer = load_run_tokenizer(run_dir)
    record = json.loads((run_dir / "explain" / "ig" / "attributions.json").read_text())
    page = (run_dir / "explain" / "ig" / "tokens.html").read_text()
    shown = [html.unescape(text) for text in re.findall(r'title="[^"]*">(.*?)</span>', page)]
    vocabulary = {
        tokenizer.decode([t]).replace(" ", "\u00a0").replace("\n", "↵") for t in range(tokenizer.vocab_size)
    }
    assert len(shown) == 16 and set(shown) <= vocabulary
    assert any(len(piece) > 1 for piece in shown)  # merged tokens, not bytes
    assert (
        len(record["attributions"][0]) == 16
        and record["fidelity"]["summary"]["completeness_error"]["max"] < 0.01
    )


def test_table_model_draws_feature_bars(table_run):
    explain(table_run, "--method", "kernel_shap", "--samples", "2")
    record = json.loads((table_run / "explain" / "kernel_shap" / "attributions.json").read_text())
    assert (table_run / "explain" / "kernel_shap" / "features.png").is_file() and len(
        record["attributions"][0]
    ) == 13


def error_of(*args: str) -> BehemothError:
    result = runner.invoke(app, ["explain", *map(str, args), "--no-progress"])
    assert isinstance(result.exception, BehemothError), result.output
    return result.exception


def test_one_line_errors(digits_run, text_run, tmp_path):
    assert "unknown method; known: ig, saliency" in str(error_of(digits_run, "--method", "deeplift"))
    assert "--samples 100000 is larger than the test split" in str(
        error_of(digits_run, "--samples", "100000")
    )
    assert "'lime' does not support language models" in str(error_of(text_run, "--method", "lime"))
    assert isinstance(error_of(digits_run, "explain.n_steps=0"), ConfigError)
    bare = tmp_path / "bare"  # a run without weights
    bare.mkdir()
    for name in ("config.toml", "spec.json"):
        (bare / name).write_text((digits_run / name).read_text())
    assert "has no trained weights" in str(error_of(bare))


def test_cli_error_is_one_line(digits_run):
    done = subprocess.run(
        behemoth_cmd("explain", str(digits_run), "--method", "deeplift"),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("behemoth: error: --method deeplift: unknown method")


def compressed_copy(digits_run, tmp_path, recipe: str):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(digits_run, copy, ignore=shutil.ignore_patterns("explain", "report"))
    result = runner.invoke(app, ["compress", str(copy), "--recipe", recipe, "--no-latency", "--no-progress"])
    assert result.exit_code == 0, result.output
    return copy


def compression_rho(run_dir, method: str) -> dict:
    record = json.loads((run_dir / "explain" / f"{method}-compressed" / "attributions.json").read_text())
    assert record["model"] == str(run_dir / "compressed" / "model.bhm")
    return record["fidelity"]["summary"]


def test_packed_but_unchanged_weights_explain_exactly_alike(digits_run, tmp_path):
    run_dir = compressed_copy(digits_run, tmp_path, "code=zstd")  # packing only: the same float weights
    explain(run_dir, "--compressed", "--method", "ig", "--samples", "4")
    summary = compression_rho(run_dir, "ig")
    assert summary["compression_spearman"]["mean"] == pytest.approx(1.0)
    assert summary["completeness_error"]["max"] < 0.01  # IG through the packed model is still complete


def test_pruned_model_attributions_are_compared_with_the_uncompressed_ones(digits_run, tmp_path):
    run_dir = compressed_copy(
        digits_run, tmp_path, "prune=0.6,schedule=oneshot,retrain_epochs=0,code=huffman"
    )
    explain(run_dir, "--compressed", "--method", "saliency", "--samples", "4")
    rho = compression_rho(run_dir, "saliency")["compression_spearman"]
    assert 0.2 < rho["mean"] < 0.999  # related, not identical: 60% of the weights are gone


def test_int8_model_takes_perturbation_methods_and_refuses_gradient_ones(digits_run, tmp_path):
    run_dir = compressed_copy(digits_run, tmp_path, "quant=int8,code=zstd")
    error = error_of(run_dir, "--compressed", "--method", "ig")
    assert "int8 kernels" in str(error) and "occlusion" in str(error)
    explain(run_dir, "--compressed", "--method", "occlusion", "--samples", "3")
    summary = compression_rho(run_dir, "occlusion")
    assert summary["compression_spearman"]["mean"] > 0.5 and summary["randomization_spearman"] is None


def test_ig_says_when_samples_miss_the_completeness_tolerance(digits_run):
    # 2 steps and no room to double: some samples must stay above a 0.01% tolerance, and every output says so
    result = explain(
        digits_run,
        "explain.n_steps=2",
        "explain.max_steps=2",
        "explain.completeness_tol=0.0001",
        "explain.sanity_check=false",
        "--method",
        "ig",
        "--samples",
        "6",
    )
    record = json.loads((digits_run / "explain" / "ig" / "attributions.json").read_text())
    missed, errors = record["completeness_misses"], record["fidelity"]["per_sample"]["completeness_error"]
    assert missed["count"] == sum(e >= 0.0001 for e in errors) > 0
    assert missed["samples"] == [i for i, e in enumerate(errors) if e >= 0.0001]
    assert missed["max_error"] == max(errors) and missed["max_steps"] == 2
    assert (
        f"warning: {missed['count']} of 6 samples stayed above the 0% completeness tolerance" in result.output
    )
    from behemoth.reporting import build_report

    html_path, _ = build_report(digits_run)
    assert f"Warning: {missed['count']} of 6 samples stayed above" in html_path.read_text()
    explain(digits_run, "--method", "ig", "--samples", "6")  # the default budget: complete again
    record = json.loads((digits_run / "explain" / "ig" / "attributions.json").read_text())
    assert record["completeness_misses"]["count"] == 0
