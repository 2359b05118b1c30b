"""`behemoth demo --quick`: the README's main job, end to end in a real process (train -> evaluate -> compress
-> explain -> federated -> report), on a slice of MNIST; the report it writes is opened in Chromium."""

import json
import subprocess

import pytest

from tests.browser import check_in_chromium, needs_chromium
from tests.conftest import behemoth_cmd, failure_text, subprocess_env


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        behemoth_cmd("demo", "--quick", "--samples", "2"),
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
        cwd=root,
    )
    assert result.returncode == 0, failure_text(result.stderr)
    return root / "runs" / "demo", result.stdout


def test_demo_runs_every_stage_and_reports_them(demo_run):
    run_dir, stdout = demo_run
    assert "report: runs/demo/report/report.html" in stdout
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert summary["sections"] == [
        "overview",
        "config",
        "data",
        "training",
        "evaluation",
        "compress",
        "explain",
        "federated",
    ]
    assert summary["evaluation"]["acc"] > 0.9  # 6,000 images, one epoch
    steps = [r["step"] for r in summary["compression"]]
    assert steps == ["baseline", "pruned", "quantized", "coded"]
    coded = summary["compression"][-1]
    assert coded["bytes"] == (run_dir / "compressed" / "model.bhm").stat().st_size
    assert coded["compression"] > 5 and coded["acc"] > summary["evaluation"]["acc"] - 0.02
    assert summary["federated"]["rounds"] == 1 and summary["federated"]["test_acc"] > 0.5
    assert (run_dir / "data_preview.png").is_file() and (run_dir / "explain" / "ig" / "grid.png").is_file()


@needs_chromium
def test_demo_report_renders_in_headless_chromium(demo_run, tmp_path):
    run_dir, _ = demo_run
    images = check_in_chromium(
        run_dir / "report" / "report.html",
        "behemoth report: demo",
        tmp_path / "profile",
        run_dir / "report" / "screenshot.png",
    )
    assert {
        "training samples preview",
        "training curves",
        "confusion matrix",
        "compression trade-offs",
        "ig attributions",
        "federated rounds",
    } <= set(images)
