"""LLM-Pruner (block-wise, no recovery): the gradient, the Taylor scores, the share per block."""

import pytest
import torch
from conftest import synthetic_calibration, tiny_model

from baselines.llm_pruner.llm_pruner import LLMPruner, calibration_gradients, taylor
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.targets import count_parameters, measure_ratio


def test_the_gradient_is_that_of_the_mean_next_token_loss():
    model = tiny_model("llama3", layers=3)
    ids = synthetic_calibration(4, 24).input_ids
    adapter = ModelAdapter(model)
    grads, squares = calibration_gradients(adapter, ids, torch.device("cpu"), second=True)
    for p in model.parameters():
        p.requires_grad_(True)
    model.zero_grad()
    model(ids, labels=ids).loss.backward()  # transformers' mean over every predicted token
    for name, linear in adapter.named_linears():
        torch.testing.assert_close(grads[name], linear.weight.grad, rtol=1e-4, atol=1e-7)
    per_example = []
    for window in ids.split(1):
        model.zero_grad()
        model(window, labels=window).loss.backward()
        per_example.append(adapter.linears(adapter.blocks[1])["down"].weight.grad.clone())
    torch.testing.assert_close(squares["layers.1.down"], torch.stack(per_example).pow(2).mean(0), rtol=1e-4, atol=1e-10)


def test_taylor_scores_by_row_and_column():
    w, g, sq = torch.tensor([[1.0, -2.0], [3.0, 0.5]]), torch.tensor([[0.5, 1.0], [-1.0, 2.0]]), torch.ones(2, 2)
    torch.testing.assert_close(taylor("param_first", w, g, None, 1), torch.tensor([0.5 + 2.0, 3.0 + 1.0]))
    torch.testing.assert_close(taylor("vectorize", w, g, None, 1), torch.tensor([abs(0.5 - 2.0), abs(-3.0 + 1.0)]))
    torch.testing.assert_close(taylor("param_mix", w, g, sq, 0), torch.tensor([abs(0.5 - 0.5) + abs(-3 - 4.5),
                                                                              abs(-2 - 2) + abs(1 - 0.125)]))


def test_llm_pruner_prunes_the_middle_blocks_to_the_ratio(arch):
    model = tiny_model(arch, layers=6)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    shapes = [[lin.weight.shape for lin in adapter.linears(b).values()] for b in adapter.blocks]
    report = LLMPruner().compress(adapter, synthetic_calibration(4, 24),
                                  Target(0.3, options={"skip_first": 1, "skip_last": 1, "examples": 3}))
    assert measure_ratio(dense, adapter).ratio == pytest.approx(0.3, abs=0.005)
    for i in (0, 5):
        assert [lin.weight.shape for lin in adapter.linears(adapter.blocks[i]).values()] == shapes[i]
    heads = [report.layer_ratios[f"layers.{i}.heads"] for i in range(1, 5)]
    assert len(set(heads)) == 1  # the same share of heads in every pruned block


def test_llm_pruner_removes_the_lowest_scoring_heads():
    model = tiny_model("llama2", layers=3)  # one KV head per query head: the reference's case
    adapter = ModelAdapter(model)
    calib = synthetic_calibration(4, 24)
    grads, _ = calibration_gradients(adapter, calib.input_ids[:2], torch.device("cpu"), second=False)
    block = adapter.blocks[1]
    heads, _ = LLMPruner.group_scores(adapter, 1, block, "param_first", grads, {})
    lin = adapter.linears(block)
    hd, H = adapter.head_dim, adapter.num_heads
    direct = sum((lin[r].weight * grads[f"layers.1.{r}"]).abs().reshape(H, hd, -1).sum((1, 2)) for r in ("q", "k", "v"))
    direct = direct + (lin["o"].weight * grads["layers.1.o"]).abs().reshape(-1, H, hd).sum((0, 2))
    torch.testing.assert_close(heads, direct)
    LLMPruner().compress(adapter, calib, Target(0.2, options={"skip_first": 1, "skip_last": 1, "examples": 2}))
    kept = adapter.attention(adapter.blocks[1]).heads
    gone = sorted(set(range(H)) - set(kept))
    assert gone == sorted(torch.argsort(direct, stable=True)[:len(gone)].tolist()) and gone


def test_a_grouped_query_block_loses_whole_kv_groups_as_the_reference_counts_them():
    """llama3.py's route: units counted on k's channels, floored to whole groups, each group a KV
    head with the query heads that read it, scored by the sum of those heads' scores."""
    model = ModelAdapter(tiny_model("llama3"))  # 4 query heads, 2 KV heads: groups {0, 1} and {2, 3}
    scores = torch.tensor([5.0, 4.0, 1.0, 1.5])  # group 1 sums lowest, though head 0's partner is low too
    assert LLMPruner.heads_to_remove(model, 4, scores, 0.5, "kv-group") == {2, 3}
    assert LLMPruner.heads_to_remove(model, 4, scores, 0.3, "kv-group") == set()  # 0.3 of 2 groups: none whole
    assert LLMPruner.heads_to_remove(model, 4, scores, 0.5, "query-head") == {2, 3}
    assert LLMPruner.heads_to_remove(model, 4, torch.tensor([1.0, 4.0, 2.0, 5.0]), 0.5, "query-head") == {0, 2}
    adapter = ModelAdapter(tiny_model("llama3", layers=6))
    dense = count_parameters(adapter)
    LLMPruner().compress(adapter, synthetic_calibration(), Target(0.3, options={"skip_first": 1, "skip_last": 1}))
    assert measure_ratio(dense, adapter).ratio == pytest.approx(0.3, abs=0.01)
    for block in adapter.blocks:  # every block keeps whole groups: q rows = (KV heads kept) × 2 heads
        q, k = adapter.linears(block)["q"].out_features, adapter.linears(block)["k"].out_features
        assert q == 2 * k
    with pytest.raises(ValueError, match="gqa_unit"):
        LLMPruner().compress(adapter, synthetic_calibration(), Target(0.3, options={"gqa_unit": "head"}))
