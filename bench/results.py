"""Every benchmark writes its figures to bench/results/<bench>.json through `write_result`, so the README's
tables (rendered by bench/tables.py) come from files, never from hand-copied numbers.

A result file holds: the figures (medians with spread where there are seeds or repeats, and every seed's
value), the command line, git commit (and whether the tree was dirty), torch version, cores and threads,
the date, the protocol (training precision, evaluation precision, how settings were chosen, deviations
from the paper) and, for a run with reduced settings, what was reduced. A file created from figures the
README already held carries `provenance` = CARRIED_OVER instead of a fresh measurement.
"""

import datetime
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MEASURED = "measured"
CARRIED_OVER = "carried over from README (measured under the old protocol; not re-run)"


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of per-seed (or per-repeat) values, with the values themselves."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def git_commit() -> str:
    """HEAD of the repository the bench ran from, with '+dirty' when tracked files had changes."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def environment() -> dict[str, Any]:
    import torch

    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_result(
    bench: str,
    figures: dict[str, Any],
    protocol: dict[str, Any],
    *,
    reduced: str | None = None,
    results_dir: Path = RESULTS,
) -> Path:
    """Write bench/results/<bench>.json atomically (temp file + fsync + rename) and return its path.

    protocol: training_precision, evaluation_precision, selection (how settings were chosen), seeds,
    deviations (a list of short sentences, shown beside the row). reduced: what a run cut short (None for
    the script's full default)."""
    from behemoth.files import atomic_write_text

    record = {
        "bench": bench,
        "provenance": MEASURED,
        "command": " ".join(["python", *sys.argv]),
        **environment(),
        "reduced": reduced,
        "protocol": protocol,
        "figures": figures,
    }
    path = results_dir / f"{bench}.json"
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=False) + "\n")
    print(f"result: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
    return path


def read_result(bench: str, results_dir: Path = RESULTS) -> dict[str, Any]:
    return json.loads((results_dir / f"{bench}.json").read_text())


def is_carried_over(result: dict[str, Any], row: dict[str, Any] | None = None) -> bool:
    """Whether a result (or one row of it, which may carry its own provenance) is an old, carried-over
    figure rather than a measurement under the current protocol."""
    provenance = (row or {}).get("provenance", result["provenance"])
    return provenance.startswith(CARRIED_OVER.split(" (")[0])


def merge_rows(
    bench: str, rows: dict[str, Any], *, under: str | None = "rows", results_dir: Path = RESULTS
) -> dict[str, Any]:
    """`rows` (re-measured now) over the other rows of the bench's existing file, in the file's order, so a
    bench whose rows take hours each can be re-run a few rows at a time without losing the rest. Kept rows
    keep their own provenance and say which run measured them; `under` names the figures' key holding the
    rows (None: the figures are the rows)."""
    path = results_dir / f"{bench}.json"
    if not path.is_file():
        return rows
    old = json.loads(path.read_text())
    earlier = old["figures"] if under is None else old["figures"].get(under, {})
    merged = {}
    for key, row in earlier.items():
        if key in rows:
            merged[key] = rows[key]
            continue
        merged[key] = row | {
            "provenance": row.get("provenance", old["provenance"]),
            "measured_by": row.get("measured_by", {k: old.get(k) for k in ("command", "date", "git_commit")}),
        }
    return merged | {key: row for key, row in rows.items() if key not in merged}


def kept_rows_note(rows: dict[str, Any], fresh: Sequence[str]) -> list[str]:
    """The deviation a merged file states: which rows this run did not measure, and which of them are
    from before the #19 protocol (marked † in the tables). Empty when every row is fresh."""
    kept = [key for key in rows if key not in fresh]
    if not kept:
        return []
    old = [key for key in kept if is_carried_over({"provenance": MEASURED}, rows[key])]
    note = f"rows not re-run here ({', '.join(kept)}) are kept from earlier runs"
    return [note + (f"; {', '.join(old)}: the old protocol (marked †)" if old else "")]
