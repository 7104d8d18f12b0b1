"""FLAP and Wanda-sp: the surgery and the compensation exactly, the scores against hooks on the dense model."""

import pytest
import torch
from conftest import logits_of, synthetic_calibration, tiny_model

from baselines.flap.flap import FLAP, standardized
from baselines.flap.units import BlockUnits, remove_units
from baselines.flap.wanda_sp import WandaSP
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.targets import count_parameters, measure_ratio


def o_down_inputs(model, ids):
    """Every block's o_proj and down_proj inputs on a plain forward (float64, tokens × channels)."""
    adapter, xs, handles = ModelAdapter(model), {}, []
    for i, block in enumerate(adapter.blocks):
        for role in ("o", "down"):
            handles.append(adapter.linears(block)[role].register_forward_hook(
                lambda m, a, o, key=(i, role): xs.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1]).double())))
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in xs.items()}


def test_removed_units_with_their_means_equal_the_dense_model_fed_those_means(arch):
    dense, pruned = tiny_model(arch), tiny_model(arch)
    adapter = ModelAdapter(pruned)
    hd, per = adapter.head_dim, adapter.num_heads // adapter.num_kv_heads
    heads = list(range(per))  # one whole KV group: its k and v rows go too
    channels = [0, 5, 7]
    torch.manual_seed(3)
    means = [{"o": torch.randn(adapter.num_heads * hd, dtype=torch.float64),
              "down": torch.randn(adapter.linears(b)["down"].in_features, dtype=torch.float64)} for b in adapter.blocks]
    for block, m in zip(adapter.blocks, means):
        remove_units(adapter, block, heads, channels, m)
    handles = []
    for block, m in zip(ModelAdapter(dense).blocks, means):
        for role, idx in (("o", [c for h in heads for c in range(h * hd, (h + 1) * hd)]), ("down", channels)):
            def substitute(module, args, idx=idx, mean=m[role]):
                x = args[0].clone()
                x[..., idx] = mean[idx].to(x.dtype)
                return (x,)
            handles.append(ModelAdapter(dense).linears(block)[role].register_forward_pre_hook(substitute))
    torch.testing.assert_close(logits_of(pruned), logits_of(dense), rtol=1e-4, atol=1e-4)
    assert adapter.linears(adapter.blocks[0])["down"].in_features == ModelAdapter(dense).linears(
        ModelAdapter(dense).blocks[0])["down"].in_features - 3


def test_flap_ranks_every_unit_of_the_dense_model_together_and_meets_the_ratio(arch):
    model = tiny_model(arch, layers=4)
    calibration = synthetic_calibration(4, 32, 0, batch_size=2)
    inputs = o_down_inputs(tiny_model(arch, layers=4), calibration.input_ids)
    adapter = ModelAdapter(model)
    dense_linears = [{r: adapter.linears(b)[r].weight.detach().double().clone() for r in ("o", "down")}
                     for b in adapter.blocks]
    units = [BlockUnits(adapter, b) for b in adapter.blocks]
    dense = count_parameters(adapter)
    report = FLAP().compress(adapter, calibration, Target(0.3))
    assert measure_ratio(dense, adapter).ratio == pytest.approx(0.3, abs=0.005)
    removed, kept = [], []  # MLP channels, model-wide: one threshold over every block
    for i, w in enumerate(dense_linears):
        channels = standardized(inputs[(i, "down")].var(0) * (w["down"] ** 2).sum(0))
        n = round(report.layer_ratios[f"layers.{i}.mlp"] * units[i].channels)
        order = torch.sort(channels).values
        removed += order[:n].tolist()
        kept += order[n:].tolist()
        o = (inputs[(i, "o")].var(0) * (w["o"] ** 2).sum(0)) ** 2  # heads: squared, standardised, averaged
        heads = standardized(o).reshape(units[i].heads, -1).mean(1)
        left = getattr(adapter.attention(adapter.blocks[i]), "heads", range(units[i].heads))
        gone = [h for h in range(units[i].heads) if h not in left]
        assert all(heads[g] <= max(heads[k] for k in range(units[i].heads) if k not in gone) + 1e-9 for g in gone)
    assert removed and max(removed) <= min(kept) + 1e-9


def test_wanda_sp_removes_the_same_share_of_heads_per_layer(arch):
    model = tiny_model(arch, layers=3)
    calibration = synthetic_calibration(4, 32, 0, batch_size=2)
    first = o_down_inputs(tiny_model(arch, layers=3), calibration.input_ids)  # block 0 sees the embeddings either way
    adapter = ModelAdapter(model)
    w_o = adapter.linears(adapter.blocks[0])["o"].weight.detach().double().clone()
    H = adapter.num_heads
    dense = count_parameters(adapter)
    report = WandaSP().compress(adapter, calibration, Target(0.5))
    assert all(report.layer_ratios[f"layers.{i}.heads"] == int(0.5 * H) / H for i in range(3))
    assert measure_ratio(dense, adapter).ratio == pytest.approx(0.5, abs=0.005)
    score = (w_o.abs() * first[(0, "o")].norm(dim=0)[None, :]).mean(0).reshape(H, -1).sum(1)
    expected = sorted(torch.argsort(score, stable=True)[:int(0.5 * H)].tolist())
    attention = adapter.attention(adapter.blocks[0])
    assert [h for h in range(H) if h not in attention.heads] == expected


def test_flap_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="WIFV"):
        FLAP().compress(ModelAdapter(tiny_model("llama3")), synthetic_calibration(),
                        Target(0.3, options={"metric": "XYZ"}))
