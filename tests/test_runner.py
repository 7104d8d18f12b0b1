"""The run loop: validation before work, records, resume, failures, leaderboards, CLI."""

import json
import re

import pytest

from harness import hookimpl
from harness.cli import main
from harness.method import CompressionReport, Method
from harness.plugins import load_plugins
from harness.report.leaderboard import write_leaderboards
from harness.results import write_json_atomic
from harness.run import RunConfig, run


class Exploding(Method):
    name = "exploding"
    kind = "unstructured"
    patterns = ("unstructured",)
    needs_calibration = False

    def compress(self, model, calibration, target):
        raise RuntimeError("out of memory, pretend")


class Overshooting(Method):
    """Removes twice what it is asked: the harness must refuse the row."""

    name = "overshoot"
    kind = "unstructured"
    patterns = ("unstructured",)
    needs_calibration = False

    def compress(self, model, calibration, target):
        from harness.sparsity import prune_mask

        for _, lin in model.named_linears():
            lin.weight.data[prune_mask(lin.weight.abs(), min(0.99, 2 * target.ratio), per_row=False)] = 0
        return CompressionReport()


class TestPlugins:
    @hookimpl
    def register_methods(self, register):
        register(Exploding())
        register(Overshooting())


@pytest.fixture
def registry():
    return load_plugins(extra=[TestPlugins()])


@pytest.fixture
def config(tiny_model_dir, data_dir, tmp_path):
    return RunConfig(model=str(tiny_model_dir), methods=["dense", "magnitude"], ratios=[0.2, 0.5],
                     calibration="wikitext2:4x32", eval_windows=2, eval_length=32,
                     out=tmp_path / "results", data_dir=str(data_dir), cache_dir=tmp_path / "cache")


def quiet(*args):
    pass


def test_records_and_resume(config, registry, monkeypatch):
    records = run(config, registry, log=quiet)
    assert [(r.method, r.target["ratio"]) for r in records] == [("dense", 0.0), ("magnitude", 0.2), ("magnitude", 0.5)]
    assert all(r.status == "ok" for r in records)
    for r in records[1:]:
        assert abs(r.achieved["ratio"] - r.target["ratio"]) <= 0.005
    assert records[0].achieved["ratio"] == 0
    assert records[2].metrics["ppl:wikitext2"] != records[0].metrics["ppl:wikitext2"]
    assert records[1].eval["ppl:wikitext2"]["windows"] == 2  # the subsampling is recorded
    assert records[1].provenance["torch"] and records[1].calibration is None  # magnitude uses no data
    files = sorted(config.out.glob("*.json"))
    assert len(files) == 3
    stamps = {f: f.stat().st_mtime_ns for f in files}
    logs = []

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished sweep must not load the model again")

    monkeypatch.setattr("harness.models.loading.load_model", no_loading)
    again = run(config, registry, log=logs.append)
    assert sum("skipped" in line for line in logs) == 3
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert [r.metrics for r in again] == [r.metrics for r in records]


def test_a_failing_method_does_not_lose_the_others(config, registry):
    config.methods = ["exploding", "overshoot", "magnitude"]
    config.ratios = [0.3]
    records = run(config, registry, log=quiet)
    status = {r.method: r for r in records}
    assert status["exploding"].status == "failed"
    assert "out of memory, pretend" in status["exploding"].error
    assert status["overshoot"].status == "failed" and "misses the target" in status["overshoot"].error
    assert status["magnitude"].status == "ok"
    # failed runs are retried on the next invocation, finished ones are not
    logs = []
    run(config, registry, log=logs.append)
    assert sum("skipped" in line for line in logs) == 1


@pytest.mark.parametrize("change, message", [
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"ratios": [1.5]}, r"ratio must lie in \(0, 1\)"),
    ({"ratios": [0.0]}, r"ratio must lie in \(0, 1\)"),
    ({"methods": ["exploding"], "pattern": "2:4", "ratios": []}, "does not support pattern '2:4'"),
    ({"pattern": "2:4", "ratios": [0.3]}, "fixes the ratio at 0.5"),
    ({"pattern": "5:4"}, "0 < N < M"),
    ({"evals": ["ppl:nodata"]}, "unknown dataset 'nodata'"),
    ({"evals": ["acc:wikitext2"]}, "unknown evaluation"),
    ({"evals": ["ppl:wikitext2", "zeroshot"]}, "'zeroshot' names no evaluator"),  # not a perplexity dataset
    ({"calibration": "mystery:4x32"}, "unknown dataset 'mystery'"),
    ({"model": "/no/such/model.gguf"}, "no GGUF file"),
    ({"evals": ["speed:decode@0x8"]}, "batch ≥ 1"),
    ({"match": "speedup:0.9", "ratios": None}, "S > 1"),
    ({"match": "speedup:1.5"}, "drop --ratios"),
])
def test_bad_input_fails_before_writing(config, registry, change, message):
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run(config, registry, log=quiet)
    assert not config.out.exists()


def test_missing_data_says_where_it_looked(config, registry, tmp_path):
    config.data_dir = str(tmp_path / "empty")
    config.methods = ["dense"]
    with pytest.raises(FileNotFoundError, match="empty/wikitext2/test.joined.txt"):
        run(config, registry, log=quiet)


def test_speed_eval_and_an_unreachable_speedup_are_recorded(config, registry, tmp_path):
    # Magnitude's unstructured zeros run on dense kernels: 50x is out of reach, and says so.
    config.methods, config.ratios = ["dense", "magnitude"], None
    config.match, config.match_phase = "speedup:50", "decode@1x16"
    config.evals = ["ppl:wikitext2", "speed:prefill@1x16"]
    records = {r.method: r for r in run(config, registry, log=quiet)}
    dense, magnitude = records["dense"], records["magnitude"]
    assert dense.status == "ok" and dense.metrics["speed:decode@1x16"] > 0
    assert {"speed:prefill@1x16", "speedup:prefill@1x16"} <= set(dense.metrics)
    assert dense.details["speed"]["decode@1x16"]["device"].startswith("cpu")
    assert dense.eval["speed:prefill@1x16"]["device"].startswith("cpu")  # part of the protocol
    assert magnitude.status == "unreachable" and magnitude.mode == "matched-speedup"
    assert not magnitude.match["reached"] and magnitude.match["probes"][0]["ratio"] == 0.6
    assert "best" in magnitude.error
    write_leaderboards(config.out, tmp_path / "boards", registry=registry, plots=False)
    (table,) = (tmp_path / "boards").glob("*matched-speedup.md")
    assert "cannot reach the target speedup" in table.read_text() and "magnitude (unstructured)" in table.read_text()


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_leaderboard_tables(config, registry, tmp_path):
    run(config, registry, log=quiet)
    paths = write_leaderboards(config.out, tmp_path / "boards", registry=registry)
    assert sorted(p.suffix for p in paths if p.suffix != ".png" and p.name != "index.md") == [
        ".csv", ".json", ".md"]
    assert (tmp_path / "boards" / "index.md") in paths
    plot = next(p for p in paths if p.name.endswith("ppl-wikitext2-vs-ratio.png"))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    board = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    rows = board["rows"]
    assert rows[0]["method"] == "dense" and rows[0]["Δ ppl:wikitext2"] == 0
    assert [r["target"] for r in rows[1:]] == ["0.2", "0.5"]
    assert any("calibration" in line for line in board["protocol"])
    md = next(p for p in paths if p.suffix == ".md" and p.name != "index.md").read_text()
    assert re.search(r"\|\s+rank\s+\| method", md) and "subsampled" in md
    with pytest.raises(ValueError, match="cannot sort by"):
        write_leaderboards(config.out, tmp_path / "boards", sort="bogus", registry=registry)


def test_cli_bad_input_exit_code(tmp_path, capsys):
    assert main(["run", "--methods", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["run", "--ratios", "0.2,1.2", "--methods", "magnitude", "--out", str(tmp_path / "o")]) == 2


def test_cli_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--pattern" in out and "examples:" in out and "1 − P(compressed)/P(dense)" in out


def test_cli_sweep_file_and_leaderboard(config, tmp_path, capsys):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'''
model = "{config.model}"
methods = ["dense", "magnitude"]
ratios = [0.3]
calibration = "wikitext2:4x32"
eval_windows = 1
eval_length = 32
data_dir = "{config.data_dir}"
cache_dir = "{tmp_path / 'cache'}"
''')
    code = main(["run", "--config", str(sweep), "--out", str(tmp_path / "res"),
                 "--leaderboard", str(tmp_path / "lb")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| magnitude" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("ratioz = [0.3]\n")
    assert main(["run", "--config", str(bad)]) == 2


def test_a_sweep_file_lists_its_runs_sharing_the_top_level_keys(config, tmp_path):
    """[[runs]] tables override the shared keys, one run each, checked before the first starts."""
    from harness.results import load_records

    sweep = tmp_path / "sweep.toml"
    shared = f'''
model = "{config.model}"
calibration = "wikitext2:4x32"
eval_windows = 1
eval_length = 32
data_dir = "{config.data_dir}"
cache_dir = "{tmp_path / 'cache'}"
options = {{ sparsegpt = {{ blocksize = 64 }} }}
'''
    sweep.write_text(shared + '''
[[runs]]
methods = ["dense", "sparsegpt"]
ratios = [0.25]

[[runs]]
methods = ["sparsegpt"]
pattern = "2:4"
''')
    assert main(["run", "--config", str(sweep), "--out", str(tmp_path / "res")]) == 0
    cells = sorted((r.method, r.label, r.target["options"].get("blocksize")) for r in load_records(tmp_path / "res"))
    assert cells == [("dense", "0", None), ("sparsegpt", "0.25", 64), ("sparsegpt", "2:4", 64)]
    (tmp_path / "bad.toml").write_text(shared + '[[runs]]\nmethods = ["magnitude"]\n[[runs]]\nmethods = ["nope"]\n')
    assert main(["run", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()  # the second run's bad method stopped the first too


def test_serving_settings_reach_every_speed_row_from_a_sweep_file_and_flags(config, tmp_path):
    """A sweep file's [serving] table and `harness run`'s serving flags make one ServingConfig,
    which every speed row records and the speed evaluation's spec (so its table's protocol) holds."""
    from harness.results import load_records

    sweep = tmp_path / "sweep.toml"
    sweep.write_text(f'''
model = "{config.model}"
methods = ["dense", "magnitude"]
ratios = [0.3]
calibration = "wikitext2:4x32"
evals = ["speed:decode@1x8"]
data_dir = "{config.data_dir}"
cache_dir = "{tmp_path / 'cache'}"

[serving]
decode_kernels = "torch"
sparse_output_copy = "all"
''')
    assert main(["run", "--config", str(sweep), "--out", str(tmp_path / "res"), "--no-fuse"]) == 0
    for record in load_records(tmp_path / "res"):
        row = record.details["speed"]["decode@1x8"]["serving"]
        assert row["decode_kernels"] == "torch" and row["sparse_output_copy"] == "all" and row["fuse"] is False
        assert record.eval["speed:decode@1x8"]["fuse"] is False
    (tmp_path / "bad.toml").write_text(sweep.read_text() + 'decode_kernel = "torch"\n')
    assert main(["run", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "res")]) == 2


def test_speed_rows_carry_the_hardware_fractions(config, registry, monkeypatch):
    """Decode against the memory roofline, prefill against the matmul peak (figures a GPU
    measures; here stand-ins): each row says how far it is from the hardware, not only from dense."""
    from harness.evaluations import speed

    monkeypatch.setattr(speed, "hardware_ceilings", lambda device, dtype: (1e11, 1e12))
    config.methods, config.ratios = ["dense"], [0.5]
    config.evals = ["speed:decode@1x16,prefill@1x16"]
    (dense,) = run(config, registry, log=quiet)
    decode, prefill = (dense.details["speed"][k] for k in ("decode@1x16", "prefill@1x16"))
    expected = (decode["decode_read_bytes"] + decode["kv_cache_bytes"]) / 1e11 / (decode["step_ms"] / 1e3)
    assert dense.metrics["roofline:decode@1x16"] == pytest.approx(expected)
    assert dense.metrics["peak:prefill@1x16"] == pytest.approx(prefill["flops"] / (prefill["step_ms"] / 1e3) / 1e12)
    assert "roofline:prefill@1x16" not in dense.metrics and "peak:decode@1x16" not in dense.metrics


def test_a_matched_speedup_cell_killed_midway_resumes_its_search(config, registry, monkeypatch):
    """The deadline kills a cell in its speed search (after two probes); the rerun reads those
    probes back from the file beside the record, measures only the others, and removes the
    file once the record is written. Speed is a closed-form curve here: 1 + 0.8 r²."""
    from harness.evaluations.speed import DenseSpeed
    from harness.run import speedmatch
    from harness.run.sweep import probe_memo_path

    calls = []

    def fake_probe(method, make_model, target, specs, device, *args, **kwargs):
        if kill_after is not None and len(calls) == kill_after:
            raise KeyboardInterrupt  # the process is killed; nothing after this line runs
        calls.append(target.ratio)
        return target.ratio, {specs[0].label: {"tokens_per_s": 100.0 * (1 + 0.8 * target.ratio ** 2)}}

    monkeypatch.setattr(speedmatch, "probe_speed", fake_probe)
    monkeypatch.setattr(DenseSpeed, "tokens_per_s", lambda self, label: 100.0)
    config.methods, config.ratios = ["dense", "magnitude"], None
    config.match, config.match_phase = "speedup:1.25", "decode@1x16"
    config.evals = ["ppl:wikitext2"]
    kill_after = 2
    with pytest.raises(KeyboardInterrupt):
        run(config, registry, log=quiet)
    (memo,) = config.out.glob("*magnitude*.probes")
    memo_text = memo.read_text()
    assert len(memo_text.splitlines()) == 2 and not list(config.out.glob("*magnitude*.json"))
    killed, kill_after, calls[:] = list(calls), None, []
    records = {r.method: r for r in run(config, registry, log=quiet)}
    magnitude = records["magnitude"]
    assert magnitude.status == "ok" and magnitude.match["reached"]
    assert 1 + 0.8 * magnitude.target["ratio"] ** 2 == pytest.approx(1.25, abs=0.025)
    probes = magnitude.match["probes"]
    assert [p["ratio"] for p in probes[:2]] == killed and all(p["resumed"] for p in probes[:2])
    assert calls == [p["ratio"] for p in probes[2:]] and not any("resumed" in p for p in probes[2:])
    assert not probe_memo_path(magnitude.path).exists()
    # --overwrite redoes the search from scratch, whatever an earlier cut run left
    probe_memo_path(magnitude.path).write_text(memo_text)
    config.overwrite, calls[:] = True, []
    again = {r.method: r for r in run(config, registry, log=quiet)}["magnitude"]
    assert not any(p.get("resumed") for p in again.match["probes"]) and len(calls) == len(probes)


def test_all_methods_but_the_excluded_ones(config):
    from harness.plugins import default_registry
    from harness.run.plan import plan_runs

    registry = default_registry()
    config.ratios = [0.3]
    config.methods = ["all", "-sleb", "-besa"]
    names = {p.method.name for p in plan_runs(config, registry)}
    assert "sleb" not in names and "besa" not in names and {"dense", "wanda", "shortgpt", "rtn"} <= names
    config.methods = ["all", "wanda"]
    with pytest.raises(ValueError, match="exclusions"):
        plan_runs(config, registry)
    config.methods = ["all", "-nope"]
    with pytest.raises(Exception, match="unknown method 'nope'"):
        plan_runs(config, registry)
