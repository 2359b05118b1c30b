"""Assemble the report: collect artifacts, build each section, render one self-contained HTML page
(plots inlined as base64 PNG, no scripts, no network) and a machine-readable summary.json."""

import json
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from behemoth.files import atomic_write_text
from behemoth.reporting.artifacts import RunArtifacts, collect
from behemoth.reporting.sections import Section
from behemoth.reporting.stage_sections import BUILDERS
from behemoth.runs import RunDir


def render(art: RunArtifacts, sections: list[Section]) -> str:
    env = Environment(
        loader=PackageLoader("behemoth.reporting", "templates"), autoescape=select_autoescape(["j2"])
    )
    name = art.config.get("name", art.run_dir.name)
    subtitle = f"{art.run_dir} · written {time.strftime('%Y-%m-%d %H:%M')} by behemoth report"
    return env.get_template("report.html.j2").render(
        title=f"behemoth report: {name}", subtitle=subtitle, sections=sections
    )


def summarise(art: RunArtifacts, sections: list[Section]) -> dict[str, Any]:
    """The numbers behind the page, for scripts and for comparing runs."""
    summary = art.summary or {}
    return {
        "run": str(art.run_dir),
        "name": art.config.get("name"),
        "sections": [s.id for s in sections],
        "config": art.config,
        "training": {k: v for k, v in summary.items() if k not in ("data",)},
        "data": summary.get("data"),
        "evaluation": art.evaluation,
        "explanations": [
            {
                "method": r["method"],
                "samples": r["samples"],
                "fidelity": (r.get("fidelity") or {}).get("summary"),
                "attributions_per_second": r.get("attributions_per_second"),
                "ig_completeness_max": r.get("ig_completeness_max"),  # a generation explained
            }
            for r in art.explanations
        ],
        "compression": (art.compression or {}).get("rows"),
        "generations": art.generations,
        "federated": federated_summary(art.federated),
    }


def federated_summary(fed: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fed:
        return None
    last = fed["rounds"][-1]
    return {
        "dir": fed["dir"],
        "rounds": last["round"],
        "test_acc": last.get("test.acc"),
        "epsilon": last.get("epsilon"),
        **{
            k: v
            for k, v in (fed["summary"] or {}).items()
            if k in ("strategy", "clients", "partition", "stop_reason")
        },
    }


def build_report(run_dir: Path) -> tuple[Path, Path]:
    """Write <run>/report/report.html and <run>/report/summary.json; return their paths."""
    art = collect(run_dir)
    sections = [s for s in (build(art) for build in BUILDERS) if s is not None and s.blocks]
    run = RunDir(run_dir)
    run.report_dir.mkdir(exist_ok=True)
    html_path, json_path = run.report_html, run.report_summary
    atomic_write_text(html_path, render(art, sections))
    atomic_write_text(json_path, json.dumps(summarise(art, sections), indent=2, default=str) + "\n")
    return html_path, json_path
