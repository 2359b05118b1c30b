"""Read what the stages left in a run directory, as plain data. The report never imports train/ or
the other stages: it reads their files, and a stage that did not run simply leaves nothing to read."""

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from behemoth.errors import RunDirError
from behemoth.runs import RunDir


@dataclass
class RunArtifacts:
    run_dir: Path
    config_text: str  # config.toml as written: the fully resolved config
    config: dict[str, Any]
    spec: dict[str, Any] | None = None  # spec.json
    summary: dict[str, Any] | None = None  # summary.json (training)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records
    evaluation: dict[str, Any] | None = None  # eval.json (behemoth evaluate)
    explanations: list[dict[str, Any]] = field(default_factory=list)  # explain/<method>/attributions.json
    federated: dict[str, Any] | None = (
        None  # {"dir", "summary", "rounds"}: this run's or a nested run's rounds
    )
    compression: dict[str, Any] | None = None  # compressed/compress.json (behemoth compress)
    generations: list[dict[str, Any]] = field(default_factory=list)  # generations.json: sampled text


def read_json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by a killed run: the rest of the file still reads
    return records


def read_explanations(run_dir: Path) -> list[dict[str, Any]]:
    """Each method's record without the raw attribution arrays (they stay in the JSON file)."""
    records = []
    for path in RunDir(run_dir).explanation_records():
        record = json.loads(path.read_text())
        record.pop("attributions", None)
        record["picture_path"] = str(path.parent / record["picture"])
        records.append(record)
    return records


def read_federated(run_dir: Path, metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Round records (`behemoth federate`) of this run, or of a federated run nested inside it (the demo
    puts its short federated run in <run>/federated)."""
    candidates = [(run_dir, metrics)] + [
        (sub.parent, read_jsonl(RunDir(sub.parent).metrics)) for sub in sorted(run_dir.glob("*/config.toml"))
    ]
    for directory, records in candidates:
        rounds = [r for r in records if r.get("kind") == "round"]
        if rounds:
            return {"dir": str(directory), "summary": read_json(RunDir(directory).summary), "rounds": rounds}
    return None


def collect(run_dir: Path) -> RunArtifacts:
    """Everything a report can show about `run_dir`; raises if it is not a run directory."""
    config_path = RunDir(run_dir).config_file
    if not config_path.is_file():
        raise RunDirError(f"{run_dir} is not a behemoth run directory (no config.toml)")
    text = config_path.read_text()
    metrics = read_jsonl(RunDir(run_dir).metrics)
    return RunArtifacts(
        run_dir=run_dir,
        config_text=text,
        config=tomllib.loads(text),
        spec=read_json(RunDir(run_dir).spec_file),
        summary=read_json(RunDir(run_dir).summary),
        metrics=metrics,
        evaluation=read_json(RunDir(run_dir).evaluation),
        explanations=read_explanations(run_dir),
        federated=read_federated(run_dir, metrics),
        compression=read_json(RunDir(run_dir).compress_record),
        generations=read_json(RunDir(run_dir).generations) or [],
    )
