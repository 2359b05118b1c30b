"""The README's benchmark tables are what bench/tables.py renders from the committed bench/results files, so
the figures in the text cannot drift from the measurements (fast: renders files, runs no benchmark)."""

import importlib.util
import json
import shutil

import pytest

from bench.results import CARRIED_OVER
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


def test_rerunning_some_rows_keeps_the_others_each_marked_as_it_was(tmp_path):
    """A bench whose rows take hours (fedavg.py --rows) re-measures a few: the file keeps the rest, in order,
    each saying which run measured it, and only the old-protocol ones keep their dagger."""
    from bench.results import is_carried_over, merge_rows, read_result

    results = tmp_path / "results"
    shutil.copytree(REPO / "bench" / "results", results)
    old = read_result("fedavg", results)
    for mark in ("provenance", "measured_by"):  # a row measured by the file's own run
        old["figures"]["rows"]["2nn-fedavg:shards"].pop(mark, None)
    old["figures"]["rows"]["cnn-fedavg:iid"]["provenance"] = CARRIED_OVER  # an old-protocol row
    (results / "fedavg.json").write_text(json.dumps(old))
    fresh = {
        "2nn-fedavg:iid": {
            "lr": 0.05,
            "rounds": {"median": 40, "min": 35, "max": 52, "values": [40, 35, 52]},
            "seeds": [0, 1, 2],
            "per_seed": [40, 35, 52],
            "paper": 87,
            "note": "",
        }
    }
    rows = merge_rows("fedavg", fresh, results_dir=results)
    assert list(rows) == list(old["figures"]["rows"]) and rows["2nn-fedavg:iid"] == fresh["2nn-fedavg:iid"]
    for key, row in rows.items():
        if key != "2nn-fedavg:iid":
            before = old["figures"]["rows"][key]
            assert row["provenance"] == before.get("provenance", old["provenance"])
            assert row["rounds"] == before["rounds"] and "command" in row["measured_by"]
    assert rows["2nn-fedavg:shards"]["measured_by"]["command"] == old["command"]
    merged = old | {"provenance": "measured", "figures": {"rows": rows}}
    (results / "fedavg.json").write_text(json.dumps(merged))

    table = tables.fedavg_table(results).splitlines()
    for key, (name, partition, *_) in tables.FED_ROWS.items():
        line = next(line for line in table if line.startswith(f"| {name} | {partition} |"))
        assert (tables.DAGGER in line) == is_carried_over(merged, rows[key]), line
    assert is_carried_over(merged, rows["cnn-fedavg:iid"])
    assert not is_carried_over(merged, rows["2nn-fedavg:iid"])
    assert sum("not re-measured under the #19 protocol" in line for line in table) == 1
    main = next(line for line in tables.main_table(results).splitlines() if line.startswith("| `fedavg.py`"))
    cnn = rows["cnn-fedavg:iid"]
    assert "2NN 40 (35-52) vs 87" in main and f"{tables.DAGGER}{tables.fedavg_cell(cnn)} vs 20" in main
    assert f"{tables.DAGGER}40" not in main
