"""BESA: exact target sparsity, unequal allocation, better reconstruction than Wanda."""

import copy

import pytest
import torch
from conftest import synthetic_calibration, tiny_model

from baselines.wanda.wanda import Wanda
from harness.calibration import sequential
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.targets import count_parameters, measure_ratio
from methods.besa.besa import BESA, LearnedSparsityLinear


def calibration(n=16, length=32, seed=0):
    return synthetic_calibration(n, length, seed, batch_size=4)


def test_mask_is_hard_forward_expected_backward():
    lin = torch.nn.Linear(40, 6, bias=False)
    layer = LearnedSparsityLinear(lin, lin.weight.abs(), step=0.05, rows_per_group=1)
    with torch.no_grad():
        layer.logits[:, 8] = 3.0  # favour candidate 0.6 sparsity
    mask = layer.mask()
    pruned = (mask == 0).sum(1)
    expected = (layer.row_sparsity() * 40).long()
    assert torch.equal(pruned, expected)  # forward: exactly the hard mask
    order = lin.weight.abs().argsort(1)
    for r in range(6):  # the pruned ones are the least important of the row
        assert bool((mask[r, order[r, : expected[r]]] == 0).all())
    mask.sum().backward()  # backward: gradient reaches the logits through the expected mask
    assert layer.logits.grad is not None and layer.logits.grad.abs().sum() > 0


@pytest.mark.parametrize("any_arch", ["llama3", "phi2", "gemma2"])
def test_target_met_and_layers_differ(any_arch):
    model = tiny_model(any_arch)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    report = BESA().compress(adapter, calibration(), Target(0.5, options={"epochs": 3}))
    ratio = measure_ratio(dense, adapter).ratio
    assert abs(ratio - 0.5) <= 0.005
    per_layer = list(report.layer_ratios.values())
    assert max(per_layer) - min(per_layer) > 0.02  # a real allocation, not uniform


def test_block_reconstruction_beats_wanda():
    model = tiny_model("llama2")
    calib = calibration()
    errors = {}
    for name, method in (("wanda", Wanda()), ("besa", BESA())):
        pruned = copy.deepcopy(model)
        method.compress(ModelAdapter(pruned), calib, Target(0.5, options={"epochs": 3} if name == "besa" else {}))
        # error of block 0 on the same inputs (the embeddings)
        dense_block = next(sequential(ModelAdapter(copy.deepcopy(model)), calib.input_ids, "cpu"))
        ref = torch.cat(dense_block.forward())
        step = next(sequential(ModelAdapter(pruned), calib.input_ids, "cpu"))
        errors[name] = float((torch.cat(step.forward()) - ref).norm() / ref.norm())
    assert errors["besa"] < errors["wanda"]
