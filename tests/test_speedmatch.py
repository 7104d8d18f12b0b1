"""The matched-speedup search, on speedup curves given in closed form."""

import pytest
import torch
from conftest import tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.plugins import default_registry
from harness.run.speedmatch import SpeedTarget, search_ratio


def goal(s=1.25, tol=0.02):
    return SpeedTarget.parse(f"speedup:{s}", "decode@1x64", tol)


@pytest.mark.parametrize("curve", [lambda r: 1 / (1 - r), lambda r: 1 + 0.8 * r ** 2, lambda r: 1 + r])
def test_search_finds_the_ratio_within_tolerance(curve):
    result = search_ratio(curve, goal(), log=lambda *_: None)
    assert result.reached and abs(curve(result.ratio) - 1.25) <= 0.025
    assert len(result.probes) <= 8 and result.probes[0]["ratio"] == 0.6  # r_max first


def test_unreachable_is_reported_with_the_best_speedup():
    result = search_ratio(lambda r: 1.0 + 0.01 * r, goal(), log=lambda *_: None)
    assert not result.reached and len(result.probes) == 1
    assert result.speedup == pytest.approx(1.006) and result.ratio == 0.6


def test_n_m_pattern_gets_one_probe():
    result = search_ratio(lambda r: 1.3, goal(), pattern_ratio=0.5, log=lambda *_: None)
    assert result.reached and result.ratio == 0.5 and len(result.probes) == 1


def test_impossible_r_max_backs_off():
    def curve(r):
        if r > 0.5:
            raise ValueError("cannot remove that much")
        return 1 + r
    result = search_ratio(curve, goal(), log=lambda *_: None)
    assert result.reached and result.probes[0]["ratio"] == pytest.approx(0.48)


@pytest.mark.parametrize("text", ["speedup:1.0", "speedup:0.8", "ratio:0.5", "speedup:x"])
def test_bad_match_specs_are_refused(text):
    with pytest.raises(ValueError):
        SpeedTarget.parse(text, "decode@1x64")


def test_align_gives_multiples_of_eight():
    registry = default_registry()
    model = tiny_model("llama3")
    registry.method("slicegpt").shape_probe(ModelAdapter(model), Target(0.3, options={"align": 8}))
    assert model.model.embed_tokens.weight.shape[1] % 8 == 0
    model = tiny_model("llama3")
    adapter = ModelAdapter(model)
    registry.method("intraslice-uniform").shape_probe(adapter, Target(0.4, options={"align": 8}))
    assert all(adapter.linears(b)["down"].in_features % 8 == 0 for b in adapter.blocks)
    assert all(getattr(b.self_attn, "v_dim", 8) % 8 == 0 for b in adapter.blocks)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_a_cut_search_resumes_from_its_probes(tmp_path):
    """A search killed after two probes is rerun: it retraces the same ratios, reads the two
    measured ones from the memo and measures only the rest, ending where an uncut search ends.
    Probes from another device are not reused, and a line cut by the kill is ignored."""
    from harness.run.speedmatch import ProbeMemo

    curve, measured = (lambda r: 1 / (1 - r)), []

    def speedup_at(r, cut_after=None):
        if cut_after is not None and len(measured) == cut_after:
            raise KeyboardInterrupt  # the deadline's kill
        measured.append(r)
        return curve(r)

    uncut = search_ratio(curve, goal(tol=0.005), log=lambda *_: None)
    assert len(uncut.probes) >= 4
    path, context = tmp_path / "cell.probes", {"device": "GPU A", "torch": "2.11"}
    with pytest.raises(KeyboardInterrupt):
        search_ratio(lambda r: speedup_at(r, cut_after=2), goal(tol=0.005), log=lambda *_: None,
                     memo=ProbeMemo(path, context))
    with path.open("a") as f:
        f.write('{"ratio": 0.3, "spee')  # half a line, written as the process died
    measured.clear()
    resumed = search_ratio(speedup_at, goal(tol=0.005), log=lambda *_: None, memo=ProbeMemo(path, context))
    assert [p["ratio"] for p in resumed.probes] == [p["ratio"] for p in uncut.probes]
    assert resumed.ratio == uncut.ratio and resumed.reached
    assert [p.get("resumed", False) for p in resumed.probes] == [True, True] + [False] * (len(uncut.probes) - 2)
    assert measured == [p["ratio"] for p in uncut.probes[2:]]  # only the probes the cut run never measured
    measured.clear()
    elsewhere = search_ratio(speedup_at, goal(tol=0.005), log=lambda *_: None,
                             memo=ProbeMemo(path, {**context, "device": "GPU B"}))
    assert not any(p.get("resumed") for p in elsewhere.probes) and len(measured) == len(uncut.probes)


def test_a_method_of_discrete_ratios_gets_the_smallest_step_that_reaches_the_target():
    steps = [k / 30 for k in range(1, 30)]
    curve = lambda r: 1 / (1 - r)  # noqa: E731
    result = search_ratio(curve, goal(1.25), log=lambda *_: None, steps=steps)
    first = next(r for r in steps if curve(r) >= 1.25 * 0.98)
    assert result.reached and result.ratio == first and result.speedup == pytest.approx(curve(first))
    assert len(result.probes) <= 6 and all(p["ratio"] in steps for p in result.probes)
    slow = search_ratio(lambda r: 1 + 0.1 * r, goal(1.25), log=lambda *_: None, steps=steps)
    assert not slow.reached and len(slow.probes) == 1


def test_depth_methods_name_their_steps():
    model = ModelAdapter(tiny_model("llama3", layers=4))
    assert default_registry().method("sleb").ratio_steps(model) == [0.25, 0.5, 0.75]
    assert default_registry().method("wanda").ratio_steps(model) is None


def test_a_quantization_method_gets_the_mildest_format_that_reaches_the_target(tmp_path):
    """Formats are tried mildest first and the first fast enough is chosen (it loses least);
    none fast enough: the fastest is reported, unreached. A cut search resumes per format."""
    from harness.run.speedmatch import ProbeMemo, search_grid

    grids = [("w8", {"bits": 8}), ("w4g32", {"bits": 4, "group_size": 32}), ("w4g128", {"bits": 4, "group_size": 128})]
    speed = {8: 0.9, 32: 1.3, 128: 1.6}
    measured = []

    def speedup_at(options):
        measured.append(options)
        return speed[options.get("group_size", 8)]

    found = search_grid(speedup_at, goal(1.25), grids, 0.0, log=lambda *_: None)
    assert found.reached and found.options == {"bits": 4, "group_size": 32} and found.speedup == 1.3
    assert [p["grid"] for p in found.probes] == ["w8", "w4g32"]  # the milder w8 was too slow; w4g128 never tried
    slow = search_grid(speedup_at, goal(2.0), grids, 0.0, log=lambda *_: None)
    assert not slow.reached and slow.options == {"bits": 4, "group_size": 128} and slow.speedup == 1.6
    memo_path = tmp_path / "cell.probes"
    search_grid(speedup_at, goal(2.0), grids[:2], 0.0, log=lambda *_: None, memo=ProbeMemo(memo_path, {}))
    measured.clear()
    resumed = search_grid(speedup_at, goal(2.0), grids, 0.0, log=lambda *_: None, memo=ProbeMemo(memo_path, {}))
    assert measured == [{"bits": 4, "group_size": 128}]  # only the format the cut search never timed
    assert [p.get("resumed", False) for p in resumed.probes] == [True, True, False]


def test_matched_speedup_plans_choose_a_quantizers_format(tiny_model_dir, data_dir, tmp_path):
    from harness.run import RunConfig
    from harness.run.plan import plan_runs

    config = RunConfig(model=str(tiny_model_dir), methods=["dense", "rtn", "sparsegpt+gptq"], ratios=None,
                       pattern="2:4", match="speedup:1.25", match_phase="decode@1x16", data_dir=str(data_dir),
                       out=tmp_path / "results", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="pattern"):  # rtn quantizes; it has no 2:4 pattern
        plan_runs(config, default_registry())
    config.methods = ["dense", "sparsegpt+gptq"]
    (dense, chain) = plan_runs(config, default_registry())
    assert chain.speed_target and chain.target.ratio == 0.5
    config.pattern, config.methods = "unstructured", ["dense", "rtn"]
    (_, rtn) = plan_runs(config, default_registry())
    assert rtn.speed_target and rtn.matched and rtn.mode == "matched-speedup"
    config.options = {"rtn": {"bits": 8}}
    with pytest.raises(ValueError, match="chooses rtn's bits"):
        plan_runs(config, default_registry())
