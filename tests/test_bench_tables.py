"""The README's benchmark tables are what bench/tables.py renders from the committed bench/results files, so
the figures in the text cannot drift from the measurements (fast: renders files, runs no benchmark)."""

import importlib.util
import json
import shutil

import pytest

from tests.conftest import REPO


def load_tables():
    spec = importlib.util.spec_from_file_location("bench_tables", REPO / "bench" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = load_tables()


def test_readme_tables_equal_the_rendered_result_files():
    readme = tables.readme_tables((REPO / "README.md").read_text())
    rendered = tables.render_all()
    assert set(readme) == set(tables.TABLES), "README.md lacks a bench-table block"
    for name, table in rendered.items():
        assert readme[name] == table, f"README table {name!r} differs: run python bench/tables.py --write"


def test_every_result_file_states_provenance_protocol_and_environment():
    for path in sorted((REPO / "bench" / "results").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["bench"] == path.stem
        for key in ("provenance", "command", "git_commit", "torch", "cores", "date", "protocol", "figures"):
            assert key in record, f"{path.name} lacks {key}"
        assert "deviations" in record["protocol"], f"{path.name}: protocol lacks deviations"


def test_a_changed_figure_changes_the_table_and_carried_rows_are_marked(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "bench" / "results", results)
    before = tables.main_table(results)
    record = json.loads((results / "distill.json").read_text())
    record["figures"]["distilled"] = {"median": 71, "min": 69, "max": 80, "values": [71, 69, 80]}
    record["provenance"] = "measured"
    (results / "distill.json").write_text(json.dumps(record))
    after = tables.main_table(results)
    assert after != before
    row = next(line for line in after.splitlines() if line.startswith("| `distill.py`"))
    assert "distilled **71 (69-80)** (median of 3 seeds)" in row and tables.DAGGER not in row
    carried = [line for line in after.splitlines() if tables.DAGGER in line and line.startswith("| `")]
    assert carried and after.count("not re-measured under the #19 protocol") == 1


def test_a_readme_without_markers_is_refused():
    with pytest.raises(SystemExit, match="bench-table:main"):
        tables.with_tables("no tables here\n", {"main": "| a |"})
