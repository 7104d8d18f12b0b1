"""OWL and RIA: the allocation and the scores as their formulas say, on the sequential protocol."""

import pytest
import torch
from conftest import synthetic_calibration, tiny_model
from test_pruning_baselines import block_inputs

from baselines.owl.owl import OWL, layer_sparsities, outlier_ratio
from baselines.ria.ria import RIA, ria_scores
from baselines.sparsegpt.sparsegpt import SparseGPT
from baselines.wanda.wanda import Wanda
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.targets import count_parameters, measure_ratio


def calibration():
    return synthetic_calibration(4, 32, 0, batch_size=2)


def test_owl_sparsities_average_the_target_and_spread_two_lambda():
    ratios = [0.01, 0.05, 0.02, 0.03]
    s = layer_sparsities(ratios, 0.6, 0.08)
    assert sum(s) / len(s) == pytest.approx(0.6)
    assert max(s) - min(s) == pytest.approx(0.16)
    assert s[1] == min(s) and s[0] == max(s)  # the most outliers, the lowest sparsity
    assert layer_sparsities([0.02] * 3, 0.5, 0.08) == pytest.approx([0.5] * 3)


def test_outlier_ratio_pools_the_blocks_scores():
    scores = [torch.tensor([[1.0, 1.0], [1.0, 30.0]]), torch.tensor([1.0, 1.0, 1.0, 1.0])]
    # pooled mean 38/8 = 4.75; only 30 exceeds 5 × 4.75 / 5 = 4.75 at M = 1, none at M = 7
    assert outlier_ratio(scores, 1.0) == pytest.approx(1 / 8) and outlier_ratio(scores, 7.0) == 0.0


@pytest.mark.parametrize("base,plain", [("wanda", Wanda()), ("sparsegpt", SparseGPT())])
def test_owl_at_lambda_zero_is_its_base_method(base, plain):
    a, b = tiny_model("llama3"), tiny_model("llama3")
    OWL().compress(ModelAdapter(a), calibration(), Target(0.5, options={"base": base, "lamda": 0.0}))
    plain.compress(ModelAdapter(b), calibration(), Target(0.5))
    for (name, x), (_, y) in zip(ModelAdapter(a).named_linears(), ModelAdapter(b).named_linears()):
        torch.testing.assert_close(x.weight, y.weight, rtol=0, atol=0, msg=name)


def test_owl_prunes_each_block_to_its_allocation_and_meets_the_ratio(arch):
    model = tiny_model(arch, layers=4)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    report = OWL().compress(adapter, calibration(), Target(0.6, options={"lamda": 0.1, "hyper_m": 2.0}))
    allocation = [float(item.split("/")[1]) for item in report.notes[0].split(": ", 1)[1].split(", ")]
    assert max(allocation) - min(allocation) == pytest.approx(0.2)
    for i, block in enumerate(adapter.blocks):
        weights = [lin.weight for lin in adapter.linears(block).values()]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(allocation[i], abs=1 / 64 + 0.01), i  # whole weights per row
    assert measure_ratio(dense, adapter).ratio == pytest.approx(0.6, abs=0.005 + 1 / 64)


def test_ria_scores_are_relative_to_row_and_column():
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    sq = torch.tensor([4.0, 9.0])  # ‖X‖ = 2, 3
    expected = torch.tensor([[(1 / 4 + 1 / 3) * 2 ** 0.5, (2 / 6 + 2 / 3) * 3 ** 0.5],
                             [(3 / 4 + 3 / 7) * 2 ** 0.5, (4 / 6 + 4 / 7) * 3 ** 0.5]])
    torch.testing.assert_close(ria_scores(w, sq), expected)


def test_ria_prunes_the_layers_lowest_scores_with_sequential_inputs():
    calib = calibration()
    pruned = tiny_model("llama3")
    RIA().compress(ModelAdapter(pruned), calib, Target(0.4))
    for i in range(len(ModelAdapter(pruned).blocks)):
        hybrid = tiny_model("llama3")  # blocks < i pruned, block i dense: block i's inputs
        for j in range(i):
            ModelAdapter(hybrid).blocks[j].load_state_dict(ModelAdapter(pruned).blocks[j].state_dict())
        inputs = block_inputs(hybrid, calib.input_ids)
        dense_block = ModelAdapter(tiny_model("llama3")).blocks[i]
        for role, lin in ModelAdapter(pruned).linears(ModelAdapter(pruned).blocks[i]).items():
            w = ModelAdapter(hybrid).linears(dense_block)[role].weight.detach()
            score = ria_scores(w, inputs[(i, role)].pow(2).sum(0))
            k = int(w.numel() * 0.4)
            expected = torch.zeros(w.numel(), dtype=torch.bool)
            expected[torch.sort(score.flatten(), stable=True).indices[:k]] = True
            assert torch.equal(lin.weight.flatten() == 0, expected), (i, role)  # one comparison group: the layer
            assert torch.equal(lin.weight.flatten()[~expected], w.flatten()[~expected])


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_ria_n_m_masks_are_exact(pattern, arch):
    model = tiny_model(arch)
    adapter = ModelAdapter(model)
    target = Target(0.5, pattern)
    RIA().compress(adapter, calibration(), target)
    n, m = target.n_m
    for name, lin in adapter.named_linears():
        kept = (lin.weight != 0).reshape(lin.out_features, -1, m).sum(-1)
        assert bool((kept == n).all()), name


def test_channel_reallocation_gives_every_group_one_column_of_each_band():
    from baselines.ria.permutation import reallocate

    scores = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    order = reallocate(scores, 4)
    assert sorted(order.tolist()) == list(range(16))  # a permutation
    band = {c: rank * 4 // 16 for rank, c in enumerate(scores.sum(0).argsort().tolist())}
    for group in order.reshape(-1, 4).tolist():
        assert [band[c] for c in group] == [0, 1, 2, 3]


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_the_assignment_keeps_at_least_the_score_of_the_reallocation(pattern):
    from baselines.ria.permutation import (
        assign_position,
        kept_score,
        mask_in_order,
        permuted_order,
        reallocate,
    )

    n, m = Target(0.5, pattern).n_m
    scores = torch.rand(32, 64, generator=torch.Generator().manual_seed(1)) ** 3
    start = reallocate(scores, m)
    after = assign_position(scores, start, n, m, 0)
    assert sorted(after.tolist()) == list(range(64))
    assert kept_score(scores, after, n, m) >= kept_score(scores, start, n, m) - 1e-4
    order = permuted_order(scores, n, m)
    assert kept_score(scores, order, n, m) >= kept_score(scores, start, n, m) - 1e-4
    mask = mask_in_order(scores, order, n, m)
    kept = (~mask)[:, order].reshape(32, -1, m).sum(-1)
    assert bool((kept == n).all())  # N:M in the chosen order
    assert float(scores[~mask].sum()) == pytest.approx(kept_score(scores, order, n, m), rel=1e-5)


def test_permuted_ria_rows_are_n_m_in_their_order_and_named_as_a_variant(tiny_model_dir, data_dir, tmp_path):
    from harness.plugins import load_plugins
    from harness.run import RunConfig, run

    config = RunConfig(model=str(tiny_model_dir), methods=["dense", "ria"], pattern="2:4", calibration="wikitext2:4x32",
                       eval_windows=2, eval_length=32, data_dir=str(data_dir), out=tmp_path / "out",
                       cache_dir=tmp_path / "cache", options={"ria": {"permute": True}})
    records = {r.method: r for r in run(config, load_plugins(), log=lambda *a: None)}
    permuted = records["ria"]
    assert permuted.ok, permuted.error
    assert permuted.variant == "permute" and permuted.label == "2:4"
    assert "kept score in the permuted order" in " ".join(permuted.report["notes"])
    plain = {r.method: r for r in run(RunConfig(**{**config.__dict__, "options": {}}), load_plugins(),
                                       log=lambda *a: None)}["ria"]
    assert plain.variant is None and plain.key != permuted.key  # two rows of one table
    with pytest.raises(ValueError, match="give an N:M --pattern"):
        RIA().compress(ModelAdapter(tiny_model("llama2")), calibration(), Target(0.5, options={"permute": True}))
