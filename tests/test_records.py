"""The typed Record: committed records of every schema still load and tabulate the same."""

import json
import re
import shutil
from pathlib import Path

import pytest

from harness.report.leaderboard import write_leaderboards
from harness.results import SCHEMA_VERSION, Record, is_record, load_records, write_record

BOARDS = Path(__file__).resolve().parents[1] / "leaderboards"
COMMITTED = sorted({p.parent for p in BOARDS.glob("**/*.json") if is_record(json.loads(p.read_text()))})
SMOLLM2, QWEN = BOARDS / "smollm2-135m-instruct", BOARDS / "qwen2.5-coder-0.5b-instruct-awq"


@pytest.mark.parametrize("records_dir", COMMITTED, ids=lambda p: str(p.relative_to(BOARDS)))
def test_committed_records_load_and_round_trip(records_dir, tmp_path):
    records = load_records(records_dir)
    assert records and all(r.schema == SCHEMA_VERSION for r in records)
    for r in records:
        raw = json.loads(r.path.read_text())
        assert r.metrics == raw["metrics"] and r.key == raw["key"]
        # v1 directions were a name prefix; the upgrade states them per metric
        assert all(r.higher_is_better[m] is (not m.startswith("ppl:")) for m in r.metrics)
        write_record(tmp_path / r.path.name, r)
        assert Record.from_json(json.loads((tmp_path / r.path.name).read_text())) == r


def _table_rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in markdown.splitlines()
            if line.startswith("|") and not line.startswith("|--")]


QWEN_COLUMNS = {"metrics": ["ppl:*", "zeroshot:*", "speedup:*", "peak:*"], "deltas": ["ppl:*", "zeroshot:avg"]}  # its README
SMOLLM2_COLUMNS = {"metrics": ["ppl:*", "zeroshot:*"], "deltas": ["ppl:*", "zeroshot:avg"]}  # its README


@pytest.mark.parametrize("records_dir, board, columns", [
    (SMOLLM2, "smollm2-135m-instruct--dtype-float32.md", SMOLLM2_COLUMNS),
    (SMOLLM2, "smollm2-135m-instruct--dtype-float16.md", SMOLLM2_COLUMNS),
    # one records folder, two modes: two tables (a dotted model name once wrote both to one file)
    (QWEN, "qwen2.5-coder-0.5b-instruct-awq.md", QWEN_COLUMNS),
    (QWEN, "qwen2.5-coder-0.5b-instruct-awq-matched-speedup.md", QWEN_COLUMNS),
])
def test_committed_leaderboards_regenerate(records_dir, board, columns, tmp_path):
    """Same rows, ranks and figures as the committed tables: each regenerates from its records."""
    paths = write_leaderboards(records_dir / "records", tmp_path, plots=False, formats=["markdown"], **columns)
    fresh = _table_rows(next(p for p in paths if p.name == Path(board).name).read_text())
    stored = _table_rows((records_dir / board).read_text())
    assert len(fresh) == len(stored)
    assert fresh == stored


def test_every_table_of_a_folder_gets_the_metric_columns_asked_for(tmp_path):
    """Two modes in one records folder, with plots: the second table keeps the caller's metric
    globs (the plots of the first once replaced them, dropping the matched table's speedup)."""
    write_leaderboards(QWEN / "records", tmp_path, formats=["markdown"],
                       metrics=["ppl:*", "speedup:*"], deltas=[])
    header = _table_rows((tmp_path / "qwen2.5-coder-0.5b-instruct-awq-matched-speedup.md").read_text())[0]
    assert header[-3:] == ["ppl:wikitext2", "speedup:prefill@8x2048", "compress s"]
    assert any(p.suffix == ".png" for p in tmp_path.iterdir())


def test_a_matched_row_measured_off_its_target_is_named_in_the_header(tmp_path):
    """Qwen's SliceGPT row: its search's probe matched 1.2x (1.179x, within 2 %), the compressed
    model measured 1.163x: the table shows 1.163 and its header says that row missed; IntraSlice
    (1.210x) is not named."""
    write_leaderboards(QWEN / "records", tmp_path, formats=["markdown"], plots=False)
    (line,) = [line for line in (tmp_path / "qwen2.5-coder-0.5b-instruct-awq-matched-speedup.md").read_text().splitlines()
               if "off the target" in line]
    assert "slicegpt 1.163× against 1.2× ± 2% (probe 1.179×)" in line and "intraslice" not in line
    # and what every speedup there divides by
    assert "- dense, measured in the same run: prefill@8x2048 582,419 tokens/s" in (
        tmp_path / "qwen2.5-coder-0.5b-instruct-awq-matched-speedup.md").read_text()


def test_a_cell_run_twice_shows_once_its_newest_record(tmp_path, capsys):
    """A results folder reused across harness versions holds an older record of the same cell
    under another key: the table shows the newest once and its header names the older one;
    `harness check` compares the newest too."""
    from harness.cli import main

    fresh = tmp_path / "records"
    shutil.copytree(SMOLLM2 / "records", fresh)
    (newest,) = [p for p in fresh.glob("*__wanda__0.5__*.json") if json.loads(p.read_text())["dtype"] == "float16"]
    older = json.loads(newest.read_text())
    older["metrics"]["ppl:wikitext2"] *= 1.5
    older["provenance"]["created"] = "2026-01-01T00:00:00+00:00"
    (fresh / newest.name.replace(older["key"], "0123456789")).write_text(json.dumps(older))
    write_leaderboards(fresh, tmp_path / "board", formats=["markdown"], plots=False)
    table = (tmp_path / "board" / "smollm2-135m-instruct--dtype-float16.md").read_text()
    header, *body = _table_rows(table)
    rows = [dict(zip(header, row)) for row in body]
    rows = [row for row in rows if row["method"] == "wanda" and row["target"] == "0.5"]
    assert len(rows) == 1 and rows[0]["ppl:wikitext2"] == "47.96"
    committed = (SMOLLM2 / "smollm2-135m-instruct--dtype-float16.md").read_text()
    reruns = int(re.search(r"superseded: (\d+) other record", committed).group(1))
    assert f"superseded: {reruns + 1} other record(s)" in table  # the reruns the folder holds, and this one
    stored = SMOLLM2 / "smollm2-135m-instruct--dtype-float16.json"
    assert main(["check", str(fresh), "--against", str(stored)]) == 0
    capsys.readouterr()


REAL_MODEL_TABLES = ["smollm2-135m-instruct/smollm2-135m-instruct--dtype-float32.json",
                     "smollm2-135m-instruct/smollm2-135m-instruct--dtype-float16.json",
                     "qwen2.5-coder-0.5b-instruct-awq/qwen2.5-coder-0.5b-instruct-awq.json"]


@pytest.mark.parametrize("board", REAL_MODEL_TABLES)
def test_real_model_tables_order_the_methods_as_the_papers_do(board):
    """What the papers lead one to expect (issue 17), read off the committed tables: SparseGPT ≤
    Wanda ≪ magnitude at 50 % and 2:4 (≪: magnitude's perplexity at least twice Wanda's), BESA ≤
    Wanda at 50 %, IntraSlice ahead of SliceGPT at every ratio both ran, and the zero-shot average
    lower at 0.5 than at 0.3 for every method that has both. A new record that breaks one fails here."""
    rows = json.loads((BOARDS / board).read_text())["rows"]
    ppl = {(r["method"], str(r["target"])): r["ppl:wikitext2"] for r in rows}
    for target in ("0.5", "2:4"):
        assert ppl["sparsegpt", target] <= ppl["wanda", target] and ppl["magnitude", target] >= 2 * ppl["wanda", target]
    if ("besa", "0.5") in ppl:
        assert ppl["besa", "0.5"] <= ppl["wanda", "0.5"]
    shared = {t for m, t in ppl if m == "intraslice"} & {t for m, t in ppl if m == "slicegpt"}
    assert all(ppl["intraslice", t] < ppl["slicegpt", t] for t in shared)
    assert shared or not any(m == "intraslice" for m, _ in ppl)
    average = {(r["method"], str(r["target"])): r.get("zeroshot:avg") for r in rows}
    for method, target in average:
        if target == "0.3" and average.get((method, "0.5")) is not None:
            assert average[method, "0.5"] < average[method, "0.3"], method


@pytest.mark.parametrize("board", ["llama-2-7b-shape/speed_llama-2-7b_h100.md", "history/gpu-runs/speed_llama-2-7b_h200.md",
                                   "history/gpu-runs/match_llama-2-7b_h200.md"])
def test_committed_speed_tables_show_their_json_rows(board):
    """A 7B speed table (its runs' tables, one under another) shows exactly the rows of the JSON
    beside it as `harness bench table` formats them, under the header that names the baseline."""
    from harness.run.bench import format_speed_rows, speed_header

    rows = json.loads((BOARDS / board).with_suffix(".json").read_text())
    stored = (BOARDS / board).read_text()
    assert speed_header(rows) in stored and "torch.compile" in speed_header(rows)
    header, *fresh = _table_rows(format_speed_rows(rows))
    shown = [row for row in _table_rows(stored) if row != header]
    assert sorted(shown) == sorted(fresh)
