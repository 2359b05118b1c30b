"""The report stage: one self-contained HTML page (and summary.json) from a run directory's artifacts.

It reads files only (config.toml, spec.json, summary.json, metrics.jsonl, eval.json, explain/...);
it never imports the stages that wrote them.
"""

from behemoth.reporting.build import build_report

__all__ = ["build_report"]
