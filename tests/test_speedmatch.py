"""The matched-speedup search, on speedup curves given in closed form."""

import pytest
import torch
from conftest import tiny_model

from harness.adapters import ModelAdapter
from harness.method import Target
from harness.plugins import default_registry
from harness.speedmatch import SpeedTarget, search_ratio


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
