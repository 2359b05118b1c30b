"""`behemoth demo --lm --quick`: the language-model chain end to end in a real process (KJV GPT -> Hugging
Face export -> LoRA on python-docs -> int4 .bhm -> samples from every stage -> token attributions -> report),
a few steps per stage."""

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import behemoth_cmd, failure_text, subprocess_env


@pytest.fixture(scope="module")
def demo_lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-lm")
    result = subprocess.run(
        behemoth_cmd("demo", "--lm", "--quick", "--prompt", "The list "),
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
        cwd=root,
    )
    assert result.returncode == 0, failure_text(result.stderr)
    return root / "runs" / "demo-lm", result.stdout


def test_every_stage_leaves_its_artifact(demo_lm_run):
    root, stdout = demo_lm_run
    assert "report: runs/demo-lm/python-docs/report/report.html" in stdout
    # the export is read back by transformers alone and continues the prompt exactly as behemoth's GPT
    assert "transformers' greedy text equals behemoth's: yes" in stdout
    hf_config = json.loads((root / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["GPT2LMHeadModel"]
    lora = root / "python-docs"
    assert json.loads((lora / "adapter" / "adapter_config.json").read_text())["r"] == 8
    config = tomllib.loads((lora / "config.toml").read_text())
    assert (config["data"]["name"], config["model"]["name"]) == ("python-docs", "hf")
    assert Path(config["model"]["path"]) == (root / "hf").resolve()
    fp32_bytes = (root / "hf" / "model.safetensors").stat().st_size
    assert (lora / "compressed" / "model.bhm").stat().st_size < fp32_bytes / 3  # int4 weights, fp32 rest


def test_samples_from_every_stage_share_prompt_and_sampler(demo_lm_run):
    root, stdout = demo_lm_run
    samples = json.loads((root / "python-docs" / "generations.json").read_text())
    assert [s["stage"].split(".")[0] for s in samples] == ["1", "2", "3"]
    assert {(s["prompt"], s["seed"], s["temperature"], s["max_new_tokens"]) for s in samples} == {
        ("The list ", 0, 0.8, 24)
    }
    assert all(s["text"].startswith("The list ") and len(s["text"]) > len("The list ") for s in samples)
    assert samples[2]["source"].endswith("model.bhm")
    assert all(s["text"] in stdout for s in samples)


def test_report_holds_training_int4_table_generations_and_attributions(demo_lm_run):
    root, _ = demo_lm_run
    lora = root / "python-docs"
    html = (lora / "report" / "report.html").read_text()
    for heading in ("Generations", "Compression", "Explanations", "test perplexity"):
        assert heading in html
    summary = json.loads((lora / "report" / "summary.json").read_text())
    assert [row["step"] for row in summary["compression"]][-1] != summary["compression"][0]["step"]
    assert all(row["perplexity"] > 1 for row in summary["compression"])
    record = json.loads((lora / "explain" / "generation" / "attributions.json").read_text())
    assert record["prompt"] == "The list " and len(record["generated_ids"]) == 2
