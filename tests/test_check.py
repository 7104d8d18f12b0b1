"""`harness check`: the regression gate method authors put in their CI."""

import json
import shutil
from pathlib import Path

from harness.cli import main

BOARDS = Path(__file__).resolve().parents[1] / "leaderboards"
SMOLLM2, QWEN = BOARDS / "smollm2-135m-instruct", BOARDS / "qwen2.5-coder-0.5b-instruct-awq"
RECORDS = SMOLLM2 / "records"
STORED = SMOLLM2 / "smollm2-135m-instruct--dtype-float32.json"


def copy_records(tmp_path, records: Path = RECORDS) -> Path:
    fresh = tmp_path / "fresh"
    shutil.copytree(records, fresh)
    return fresh


def edit(fresh: Path, method: str, label: str, factor: float, metric: str = "ppl:wikitext2") -> None:
    paths = list(fresh.glob(f"*__{method}__{label}__*.json"))  # a folder may hold it in several protocols
    for path in paths:
        record = json.loads(path.read_text())
        if metric in record["metrics"]:
            record["metrics"][metric] *= factor
            path.write_text(json.dumps(record))
    assert paths


def test_identical_results_pass(tmp_path, capsys):
    assert main(["check", str(copy_records(tmp_path)), "--against", str(STORED)]) == 0
    assert "harness check: OK" in capsys.readouterr().out


def test_a_degraded_result_fails_with_a_diff_table(tmp_path, capsys):
    fresh = copy_records(tmp_path)
    edit(fresh, "wanda", "0.5", 1.05)  # 5% higher perplexity
    assert main(["check", str(fresh), "--against", str(STORED), "--rtol", "0.02"]) == 1
    out = capsys.readouterr()
    line = next(line for line in out.out.splitlines() if "| wanda" in line and "| 0.5 " in line)
    assert "WORSE" in line and "+5.00%" in line
    assert "FAILED" in out.err
    # within tolerance it passes
    assert main(["check", str(fresh), "--against", str(STORED), "--rtol", "0.06"]) == 0


def test_improvements_are_reported_not_failed(tmp_path, capsys):
    fresh = copy_records(tmp_path)
    edit(fresh, "sparsegpt", "0.5", 0.9)
    assert main(["check", str(fresh), "--against", str(STORED)]) == 0
    assert "better" in capsys.readouterr().out


def test_a_missing_row_fails(tmp_path, capsys):
    fresh = copy_records(tmp_path)
    for path in fresh.glob("*__slicegpt__0.3__*.json"):
        path.unlink()
    assert main(["check", str(fresh), "--against", str(STORED)]) == 1
    assert "MISSING" in capsys.readouterr().out


def test_the_qwen_table_gates_zero_shot_too(tmp_path, capsys):
    """The Qwen2.5-0.5B leaderboard (perplexity + zero-shot columns) gates its own records, and a
    zero-shot average that dropped 3 % (higher is better) fails the check."""
    stored = QWEN / "qwen2.5-coder-0.5b-instruct-awq.json"
    fresh = copy_records(tmp_path, QWEN / "records")
    assert main(["check", str(fresh), "--against", str(stored)]) == 0
    assert "harness check: OK" in capsys.readouterr().out
    # zero-shot ran on some rows only: the table's header names each evaluation once
    from harness.report.leaderboard import protocol_header
    from harness.results import load_records

    evaluation = next(line for line in protocol_header(load_records(fresh)).splitlines() if "evaluation" in line)
    assert evaluation.count("ppl:wikitext2: 146/146 windows × 2048") == 1 and evaluation.count("zero-shot") == 1
    edit(fresh, "intraslice", "0.3", 0.97, "zeroshot:avg")
    assert main(["check", str(fresh), "--against", str(stored)]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines()
                if "| intraslice" in line and "zeroshot:avg" in line)
    assert "WORSE" in line and "-3.00%" in line


def test_the_smollm2_zero_shot_table_gates_each_task(tmp_path, capsys):
    """SmolLM2's zero-shot leaderboard gates its own records, and one task's accuracy that fell
    5 % (a per-task column, not only the average) fails the check on that row."""
    stored = SMOLLM2 / "smollm2-135m-instruct--dtype-float16.json"
    fresh = copy_records(tmp_path, SMOLLM2 / "records")
    assert main(["check", str(fresh), "--against", str(stored)]) == 0
    assert "harness check: OK" in capsys.readouterr().out
    edit(fresh, "wanda", "0.5", 0.95, "zeroshot:hellaswag")
    assert main(["check", str(fresh), "--against", str(stored)]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines()
                if "| wanda" in line and "| 0.5 " in line and "zeroshot:hellaswag" in line)
    assert "WORSE" in line and "-5.00%" in line


def test_the_qwen_matched_speedup_table_gates_speed_and_quality(tmp_path, capsys):
    """The matched-speedup table of the same folder is a gate of its own: a speedup that fell 5 %
    fails it (higher is better), as would the perplexity measured there."""
    stored = QWEN / "qwen2.5-coder-0.5b-instruct-awq-matched-speedup.json"
    fresh = copy_records(tmp_path, QWEN / "records")
    assert main(["check", str(fresh), "--against", str(stored)]) == 0
    capsys.readouterr()
    edit(fresh, "intraslice", "s-1.2", 0.95, "speedup:prefill@8x2048")
    assert main(["check", str(fresh), "--against", str(stored)]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines()
                if "| intraslice" in line and "speedup:prefill@8x2048" in line)
    assert "WORSE" in line and "-5.00%" in line
