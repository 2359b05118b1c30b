"""The report: sections from a real (tiny) run's artifacts, omitted when a stage did not run, and the page
checked in a real headless Chromium (title, every image decoded, no console errors, a screenshot)."""

import json
import shutil
import subprocess

import pytest

from behemoth.reporting import build_report
from behemoth.reporting.artifacts import read_jsonl
from tests.browser import check_in_chromium, needs_chromium
from tests.conftest import behemoth_cmd, failure_text, subprocess_env


def run(*args: str, cwd) -> str:
    result = subprocess.run(
        behemoth_cmd(*args), capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=cwd
    )
    assert result.returncode == 0, failure_text(result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A digits run with an explanation: training, evaluation and explain sections all have data."""
    root = tmp_path_factory.mktemp("report")
    run("train", "digits", "name=rep", "train.epochs=3", "train.log_every=5", "--no-progress", cwd=root)
    run("explain", "runs/rep", "--method", "ig", "--samples", "3", "--no-progress", cwd=root)
    return root / "runs" / "rep"


def test_report_cli_evaluates_then_writes_every_section(trained_run):
    output = run("report", str(trained_run), cwd=trained_run.parent.parent)
    assert (
        "report.html" in output and (trained_run / "eval.json").is_file()
    )  # evaluated first: it was missing
    summary = json.loads((trained_run / "report" / "summary.json").read_text())
    assert summary["sections"] == ["overview", "config", "data", "training", "evaluation", "explain"]
    assert summary["evaluation"]["acc"] == json.loads((trained_run / "eval.json").read_text())["acc"]
    assert sum(summary["data"]["class_counts"]["test"]) == summary["data"]["splits"]["test"]
    page = (trained_run / "report" / "report.html").read_text()
    assert (
        "confusion matrix" in page and "completeness error" in page and "http" not in page.split("<body>")[1]
    )


def test_sections_of_stages_that_did_not_run_are_omitted(trained_run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.toml", "spec.json", "summary.json", "metrics.jsonl"):
        shutil.copy(trained_run / name, bare / name)
    build_report(bare)
    summary = json.loads((bare / "report" / "summary.json").read_text())
    assert summary["sections"] == ["overview", "config", "data", "training"]
    assert summary["evaluation"] is None and summary["explanations"] == []


def test_a_nested_federated_run_gets_its_section(trained_run, tmp_path):
    """The demo keeps its short federated run in <run>/federated: its round records make a section."""
    outer = tmp_path / "outer"
    shutil.copytree(
        trained_run, outer, ignore=shutil.ignore_patterns("report", "explain", "checkpoints", "tb")
    )
    fed = outer / "federated"
    fed.mkdir()
    shutil.copy(trained_run / "config.toml", fed / "config.toml")
    rounds = [
        {
            "kind": "round",
            "round": r,
            "step": r,
            "test.acc": 0.5 + 0.1 * r,
            "test.loss": 2.0 - 0.5 * r,
            "bytes.sent": 1000 * r,
            "bytes.received": 900 * r,
            "epsilon": 0.4 * r,
            "delta": 1e-5,
        }
        for r in range(4)
    ]
    (fed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    (fed / "summary.json").write_text(
        json.dumps(
            {
                "strategy": "fedavg",
                "clients": 4,
                "clients_per_round": 2,
                "partition": "iid",
                "stop_reason": "rounds",
            }
        )
    )
    html_path, summary_path = build_report(outer)
    assert json.loads(summary_path.read_text())["sections"][-1] == "federated"
    page = html_path.read_text()
    assert "Federated learning" in page and "(1.200, 1e-05)" in page  # the last round's privacy spent


def test_a_compressed_run_gets_its_table_and_pareto_plots(trained_run, tmp_path):
    """`behemoth compress` leaves compressed/compress.json; the report draws its rows, measured from the
    files."""
    copy = tmp_path / "rep"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("report", "explain"))
    run(
        "compress",
        str(copy),
        "--recipe",
        "prune=0.5,schedule=oneshot,retrain_epochs=0,quant=dynamic,code=zstd",
        "compress.latency_repeats=3",
        "--no-progress",
        cwd=tmp_path,
    )
    html_path, summary_path = build_report(copy)
    summary = json.loads(summary_path.read_text())
    assert summary["sections"] == ["overview", "config", "data", "training", "evaluation", "compress"]
    rows = summary["compression"]
    assert [r["step"] for r in rows] == ["baseline", "pruned", "quantized", "coded"]
    assert rows[-1]["bytes"] == (copy / "compressed" / "model.bhm").stat().st_size < rows[0]["bytes"]
    page = html_path.read_text()
    assert (
        'alt="compression trade-offs"' in page
        and f"{rows[-1]['bytes']:,}" in page
        and "ms, batch 256" in page
    )


def test_a_line_cut_off_by_a_killed_run_does_not_break_the_report(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1, "train.loss": 2.0}\n{"kind": "train", "st')
    assert read_jsonl(path) == [{"kind": "train", "step": 1, "train.loss": 2.0}]


def test_not_a_run_directory_is_one_line(tmp_path):
    result = subprocess.run(
        behemoth_cmd("report", str(tmp_path)), capture_output=True, text=True, env=subprocess_env()
    )
    assert (
        result.returncode != 0
        and result.stderr.strip().count("\n") == 0
        and "no config.toml" in result.stderr
    )


@needs_chromium
def test_report_renders_in_headless_chromium(trained_run, tmp_path):
    html = trained_run / "report" / "report.html"
    if not html.is_file():
        build_report(trained_run)
    images = check_in_chromium(
        html, "behemoth report: rep", tmp_path / "profile", trained_run / "report" / "screenshot.png"
    )
    assert len(images) >= 5  # class balance, curves, per-class, confusion matrix, IG grid


def test_generations_make_a_section_and_malformed_records_are_skipped(trained_run, tmp_path):
    """generations.json (written by `behemoth demo --lm`) may come from someone else: records without text
    are left out, and markup in the text is escaped."""
    copy = tmp_path / "gen"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("report", "checkpoints", "tb"))
    records = [
        {"stage": "1. base", "source": "runs/x", "prompt": "The ", "text": "The <script>x</script> end"},
        {"stage": "2. broken"},
        "not a record",
    ]
    (copy / "generations.json").write_text(json.dumps(records))
    build_report(copy)
    summary = json.loads((copy / "report" / "summary.json").read_text())
    assert "generations" in summary["sections"]
    page = (copy / "report" / "report.html").read_text()
    assert "1. base (runs/x)" in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "2. broken" not in page
