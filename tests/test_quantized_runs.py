"""Quantization through the harness: grid rows, chains, matched memory, exports, tables."""

import dataclasses
import json

import pytest

from harness.cli import main
from harness.models.adapters import ModelAdapter
from harness.models.export import load_compressed
from harness.plugins import load_plugins
from harness.report.leaderboard import write_leaderboards
from harness.run import RunConfig, run
from harness.run.memorymatch import MemoryTarget
from harness.run.plan import plan_runs
from harness.serving.quantized import QuantizedLinear


def quiet(*args):
    pass


@pytest.fixture
def registry():
    return load_plugins()


@pytest.fixture
def config(tiny_model_dir, data_dir, tmp_path):
    return RunConfig(model=str(tiny_model_dir), methods=["dense", "rtn"], calibration="wikitext2:4x32",
                     eval_windows=2, eval_length=32, out=tmp_path / "results", data_dir=str(data_dir),
                     cache_dir=tmp_path / "cache")


def test_grid_rows_are_labelled_by_their_grid_and_keep_every_parameter(config, registry, tmp_path):
    config = dataclasses.replace(config, methods=["dense", "rtn", "gptq", "awq"],
                                 options={"gptq": {"bits": 3, "group_size": 32}, "rtn": {"group_size": 32},
                                          "awq": {"group_size": 32}})
    records = run(config, registry, log=quiet)
    by = {r.method: r for r in records}
    assert all(r.ok for r in records), [r.error for r in records]
    assert (by["rtn"].label, by["gptq"].label, by["awq"].label) == ("w4g32", "w3g32", "w4g32")
    assert by["gptq"].mode == "grid" and by["gptq"].report["knobs"]["bits"] == 3
    for name in ("rtn", "gptq", "awq"):
        assert by[name].achieved["ratio"] == 0.0
    assert by["gptq"].achieved["memory_ratio"] > by["rtn"].achieved["memory_ratio"] > 0.6
    paths = write_leaderboards(config.out, tmp_path / "boards", registry=registry, plots=False)
    md = next(p for p in paths if p.suffix == ".md" and p.name != "index.md").read_text()
    assert "memory ratio" in md and "w3g32" in md and "quantized rows" in md


def test_variants_of_one_grid_are_two_rows(config, registry, tmp_path):
    for options in ({}, {"act_order": True}):
        run(dataclasses.replace(config, methods=["gptq"], options={"gptq": {"group_size": 32, **options}}),
            registry, log=quiet)
    paths = write_leaderboards(config.out, tmp_path / "boards", registry=registry, plots=False)
    md = next(p for p in paths if p.suffix == ".md" and p.name != "index.md").read_text()
    rows = [line for line in md.splitlines() if "| gptq " in line]
    assert len(rows) == 2 and any("w4g32 act-order" in row for row in rows) and "superseded" not in md


def test_chain_row_prunes_then_quantizes(config, registry, tmp_path):
    config = dataclasses.replace(config, methods=["sparsegpt+gptq"], pattern="2:4",
                                 options={"gptq": {"group_size": 32}})
    (record,) = run(config, registry, log=quiet)
    assert record.ok, record.error
    assert record.label == "2:4+w4g32" and record.mode == "matched-ratio"
    assert record.achieved["ratio"] == pytest.approx(0.5, abs=0.02)
    assert set(record.report["knobs"]) == {"sparsegpt", "gptq"} and record.report["knobs"]["gptq"]["keep_zeros"]
    paths = write_leaderboards(config.out, tmp_path / "boards", registry=registry, plots=False)
    md = next(p for p in paths if p.suffix == ".md" and p.name != "index.md").read_text()
    assert "N:M + quantized rows (sparsegpt+gptq 2:4+w4g32)" in md and "no kernel here runs both" in md


@pytest.mark.parametrize("methods,message", [
    (["gptq+sparsegpt"], "must come last"),
    (["rtn"], None),
])
def test_chains_and_grids_are_checked_before_work(config, registry, methods, message):
    config = dataclasses.replace(config, methods=methods)
    if message:
        with pytest.raises(ValueError, match=message):
            plan_runs(config, registry)
    else:
        (plan,) = plan_runs(config, registry)
        assert plan.label == "w4g128" and not plan.matched


@pytest.mark.parametrize("match,message", [("memory:1.5", "0 < M < 1"), ("memory:x", "0 < M < 1")])
def test_bad_memory_targets_are_refused(match, message):
    with pytest.raises(ValueError, match=message):
        MemoryTarget.parse(match)


def test_memory_match_refuses_a_fixed_grid(config, registry):
    config = dataclasses.replace(config, match="memory:0.3", options={"rtn": {"bits": 4}})
    with pytest.raises(ValueError, match="chooses rtn's bits"):
        plan_runs(config, registry)


def test_matched_memory_rows_meet_their_bytes(config, registry, tmp_path):
    # 0.49: the tiny model's residual width (64) moves SliceGPT's bytes in steps of ~1.7 %, and one
    # step lands within ±0.005 of 0.49 (none does of 0.5, which the search then reports unreachable)
    config = dataclasses.replace(config, methods=["dense", "rtn", "slicegpt", "wanda"], match="memory:0.49")
    records = {r.method: r for r in run(config, registry, log=quiet)}
    rtn, sliced, wanda = records["rtn"], records["slicegpt"], records["wanda"]
    assert rtn.ok and sliced.ok, (rtn.error, sliced.error)
    # the grid nearest at or under half the bytes, and the model has exactly those bytes
    fractions = [p["fraction"] for p in rtn.match["probes"]]
    kept = 1 - rtn.achieved["memory_ratio"]
    assert kept == pytest.approx(min((f for f in fractions if f <= 0.495), key=lambda f: abs(f - 0.49)), abs=1e-9)
    assert 1 - sliced.achieved["memory_ratio"] == pytest.approx(0.49, abs=0.005)
    assert wanda.status == "unreachable"  # unstructured zeros are stored: no byte saved at any ratio
    paths = write_leaderboards(config.out, tmp_path / "boards", registry=registry, plots=False)
    names = [p.name for p in paths]
    assert any("matched-memory" in n for n in names)
    (table,) = (tmp_path / "boards").glob("*matched-memory.md")
    assert "cannot reach the target weight memory" in table.read_text() and "wanda" in table.read_text()
    index = (tmp_path / "boards" / "index.md").read_text()
    assert "matched memory" in index


def test_quantized_export_loads_back_and_measures_the_same(config, registry, tmp_path):
    config = dataclasses.replace(config, methods=["gptq"], save_models=True, options={"gptq": {"group_size": 32}})
    (record,) = run(config, registry, log=quiet)
    assert record.ok, record.error
    model, _ = load_compressed(record.saved_model)
    linears = [m for _, m in ModelAdapter(model).named_linears()]
    assert linears and all(isinstance(m, QuantizedLinear) for m in linears)
    assert sum(m.nonzeros for m in linears) == sum(m.in_features * m.out_features for m in linears)
    # the export, run as a model of its own, has the record's perplexity
    again = dataclasses.replace(config, model=record.saved_model, methods=["dense"], save_models=False,
                                options={}, out=tmp_path / "again")
    (dense,) = run(again, registry, log=quiet)
    assert dense.metrics["ppl:wikitext2"] == pytest.approx(record.metrics["ppl:wikitext2"], rel=1e-5)


def test_plugins_lists_the_quantization_knobs(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for line in ("-o gptq.act_order=bool", "-o awq.clip=bool", "-o rtn.bits=int"):
        assert line in out


def test_bench_speed_takes_a_grid(capsys, tmp_path):
    rows_file = tmp_path / "rows.json"
    code = main(["bench", "speed", "--shape", "smollm2-135m", "--layers", "1", "--device", "cpu", "--dtype",
                 "float32", "--methods", "dense,rtn", "-o", "rtn.bits=8", "-o", "rtn.group_size=-1",
                 "--phases", "decode@1x16", "--json", str(rows_file)])
    assert code == 0
    rows = json.loads(rows_file.read_text())
    assert [r["pattern"] for r in rows] == ["unstructured", "w8"]


def test_a_matched_speedup_row_of_a_quantizer_times_its_served_formats(config, registry):
    config = dataclasses.replace(config, methods=["dense", "rtn"], ratios=None, match="speedup:1.25",
                                 match_phase="decode@1x16")
    rtn = {r.method: r for r in run(config, registry, log=quiet)}["rtn"]
    assert rtn.mode == "matched-speedup"
    served = [g.label for g in registry.method("rtn").speed_grid]
    tried = [p["grid"] for p in rtn.match["probes"]]
    assert tried == served[:len(tried)] and all(p["ratio"] == 0.0 for p in rtn.match["probes"])
    if rtn.ok:  # the first format fast enough on this CPU is the one the row has
        assert rtn.match["reached"] and rtn.label.startswith(tried[-1])
        assert rtn.target["options"] == rtn.match["options"]
    else:
        assert rtn.status == "unreachable" and "best" in rtn.error
