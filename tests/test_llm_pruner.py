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
