"""intraslice-recon (the pre-code reconstruction): exact folds, zero added parameters, allocation, rank-deficient exactness."""

import pytest
import torch
from conftest import logits_of as logits
from conftest import synthetic_calibration as calibration
from conftest import tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.targets import count_parameters, measure_ratio
from methods.intraslice.reconstruction import (
    IntraSliceReconstruction as IntraSlice,
)
from methods.intraslice.reconstruction import (
    _unit_costs,
    collect_block_stats,
    fold_mlp_channels,
    fold_value_basis,
    greedy_channels,
    refit_down,
)


def linear_parameters(adapter) -> int:
    return sum(lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
               for _, lin in adapter.named_linears())


def test_vo_fold_is_exact_for_any_orthogonal_basis(arch):
    model = tiny_model(arch)
    dense = logits(model)
    adapter = ModelAdapter(model)
    G, hd = adapter.num_kv_heads, adapter.head_dim
    for block in adapter.blocks:
        bases = torch.linalg.qr(torch.randn(G, hd, hd, dtype=torch.float64))[0]  # random rotations
        fold_value_basis(adapter, block, bases)
    torch.testing.assert_close(logits(model), dense, rtol=1e-4, atol=1e-4)


def test_keeping_every_dimension_reproduces_dense_logits(arch):
    """The full pipeline's folds with nothing dropped: PCA bases and a channel permutation."""
    model = tiny_model(arch)
    dense = logits(model)
    adapter = ModelAdapter(model)
    for step in calibration().sequential(adapter):
        acc = collect_block_stats(step, adapter)
        bases = torch.linalg.eigh(acc["vo_cov"])[1].flip(-1)
        fold_value_basis(adapter, step.module, bases)
        down = step.linears["down"].weight
        cov = collect_block_stats(step, adapter, want_vo=False)["mlp_cov"]
        order, _ = greedy_channels(cov, down, down.shape[1])
        assert sorted(order.tolist()) == list(range(down.shape[1]))
        fold_mlp_channels(adapter, step.module, order, refit_down(down, cov, order, 1e-4))
    torch.testing.assert_close(logits(model), dense, rtol=1e-4, atol=1e-4)


def make_rank_deficient(adapter, vo_dead: int, mlp_dead: int) -> None:
    """Zero value dims (same in every KV group) and dead MLP channels in every block."""
    G, hd = adapter.num_kv_heads, adapter.head_dim
    with torch.no_grad():
        for block in adapter.blocks:
            lin = adapter.linears(block)
            rows = torch.cat([g * hd + torch.arange(vo_dead) * 3 for g in range(G)])
            if "v" in lin:
                v = lin["v"]
            else:  # Phi-3 fused qkv: values come last
                v = lin["qkv"]
                rows = rows + (adapter.num_heads + G) * hd
            v.weight[rows] = 0
            if v.bias is not None:
                v.bias[rows] = 0
            width = lin["down"].in_features
            dead = torch.arange(mlp_dead) * 5
            up = lin["gate_up"] if "gate_up" in lin else lin["up"]
            up_rows = dead + width if "gate_up" in lin else dead
            up.weight[up_rows] = 0
            if up.bias is not None:
                up.bias[up_rows] = 0


def test_dropping_zero_variance_directions_is_exact(arch):
    model = tiny_model(arch)
    adapter = ModelAdapter(model)
    make_rank_deficient(adapter, vo_dead=3, mlp_dead=10)
    dense_logits = logits(model)
    dense = count_parameters(adapter)  # nonzeros: the zeroed rows are not counted ...
    before = linear_parameters(adapter)
    vo_cost, mlp_cost = _unit_costs(adapter, adapter.blocks[0])
    removable = len(adapter.blocks) * (3 * vo_cost + 10 * mlp_cost)
    zeros = before - dense.blocks  # ... so the ratio that removes exactly them is:
    report = IntraSlice().compress(adapter, calibration(), Target((removable - zeros) / dense.blocks))
    assert set(report.knobs["kept"].values()) == {adapter.head_dim - 3, adapter.linears(adapter.blocks[0])["down"].in_features}
    assert linear_parameters(adapter) == before - removable
    torch.testing.assert_close(logits(model), dense_logits, rtol=1e-4, atol=1e-4)


def test_no_added_parameters_and_allocation_differs_by_module(arch):
    model = tiny_model(arch)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    report = IntraSlice().compress(adapter, calibration(), Target(0.3))
    counted = count_parameters(adapter)
    # every parameter of every block is in one of its (smaller) linears: nothing added
    assert counted.blocks == linear_parameters(adapter)
    H, hd = adapter.num_heads, adapter.head_dim
    for i, block in enumerate(adapter.blocks):
        k = report.knobs["kept"][f"layers.{i}.vo"]
        assert adapter.linears(block)["o"].in_features == H * k
        assert block.self_attn.v_dim == k if k < hd else True
    ratio = measure_ratio(dense, adapter).ratio
    assert abs(ratio - 0.3) <= 0.005 + max(_unit_costs(adapter, adapter.blocks[0])) / dense.blocks
    assert len(set(report.layer_ratios.values())) > 1  # per-module ratios differ
    assert torch.isfinite(logits(model)).all()


@pytest.mark.parametrize("modules", [("vo",), ("mlp",)])
def test_ablations_touch_only_their_modules(modules):
    model = tiny_model("llama3")
    adapter = ModelAdapter(model)
    ratio = 0.05 if modules == ("vo",) else 0.3
    report = IntraSlice(name="x", modules=modules).compress(adapter, calibration(), Target(ratio))
    assert {k.rsplit(".", 1)[1] for k in report.layer_ratios} == set(modules)


def test_vo_only_cannot_reach_a_large_ratio():
    adapter = ModelAdapter(tiny_model("llama3"))
    with pytest.raises(ValueError, match="can remove at most"):
        IntraSlice(modules=("vo",)).compress(adapter, calibration(), Target(0.6))


def test_uniform_allocation_keeps_equal_fractions():
    adapter = ModelAdapter(tiny_model("llama2"))
    report = IntraSlice(name="u", allocation="uniform").compress(adapter, calibration(), Target(0.3))
    mlp = {v for k, v in report.layer_ratios.items() if k.endswith("mlp")}
    assert len(mlp) == 1


def test_greedy_refit_beats_magnitude_selection():
    """Output-aware selection + refit reconstructs h W_dᵀ better than keeping the largest channels."""
    torch.manual_seed(0)
    n, m, d, k = 4096, 96, 32, 48
    h = torch.randn(n, 8) @ torch.randn(8, m) + 0.1 * torch.randn(n, m)  # low-rank-ish activations
    W = torch.randn(d, m)
    cov = h.double().T @ h.double()
    order, gains = greedy_channels(cov, W, k)
    keep = order.sort().values
    ours = refit_down(W, cov, keep, 1e-6)
    by_norm = torch.topk(h.norm(dim=0) * W.norm(dim=0), k).indices.sort().values

    def err(S, Wp):
        return float((h.double() @ W.double().T - h.double()[:, S] @ Wp.T).norm())

    assert err(keep, ours) < 0.5 * err(by_norm, W.double()[:, by_norm])
    # gains are output energy retained: non-negative, and all of them add up to the total
    _, all_gains = greedy_channels(cov, W, m)
    total = float((W.double() @ cov @ W.double().T).trace())
    assert bool((all_gains >= 0).all()) and float(all_gains.sum()) == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize("method", ["intraslice", "intraslice-recon", "slicegpt"])
def test_compressed_model_saves_and_reloads_with_same_logits(method, tmp_path):
    from harness.models.export import save_compressed
    from harness.models.loading import load_model
    from harness.plugins import default_registry

    model = tiny_model("llama3")
    default_registry().method(method).compress(ModelAdapter(model), calibration(), Target(0.25))
    before = logits(model)
    save_compressed(model, None, tmp_path / "saved")
    reloaded, _ = load_model(str(tmp_path / "saved"))
    torch.testing.assert_close(logits(reloaded), before, rtol=0, atol=0)
    assert count_parameters(ModelAdapter(reloaded)) == count_parameters(ModelAdapter(model))
