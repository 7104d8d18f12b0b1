"""Checkpoints that already hold exact zeros (dequantised GGUFs: ~5 %) still hit r.

r counts the nonzeros removed relative to the dense model's nonzeros. A method that sized
its masks or widths by element count would land short (masks that pick existing zeros
first) or long (kept rows whose zeros stop counting); every method must land on target.
"""

import pytest
import torch
from conftest import synthetic_calibration, tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.plugins import default_registry
from harness.targets import (
    RatioMismatch,
    check_pattern,
    check_ratio,
    count_parameters,
    measure_ratio,
)


def with_zeros(arch: str, fraction: float) -> ModelAdapter:
    adapter = ModelAdapter(tiny_model(arch))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, linear in adapter.named_linears():
            linear.weight[torch.rand(linear.weight.shape, generator=generator) < fraction] = 0
    return adapter


def granularity(method: str, adapter: ModelAdapter) -> float:
    """How close a tiny model lets a method get: whole weights per row, whole units."""
    blocks = count_parameters(adapter).blocks
    if method == "wanda":  # whole weights per output row: up to one per row short
        return sum(lin.out_features for _, lin in adapter.named_linears()) / blocks
    if method in ("intraslice", "slicegpt"):  # one MLP channel / one residual width
        d = adapter.hidden_size
        return len(adapter.blocks) * (3 * d + 4 * d) / blocks
    return 0.0


@pytest.mark.parametrize("fraction", [0.05, 0.30])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "besa", "slicegpt", "intraslice"])
def test_every_method_hits_r_on_a_model_with_zeros(method, fraction):
    arch = "qwen2"  # q/k/v biases: biases count in r and are never pruned
    adapter = with_zeros(arch, fraction)
    dense = count_parameters(adapter)
    assert dense.block_zero_fraction == pytest.approx(fraction, abs=0.02)
    options = {"epochs": 1} if method == "besa" else {}
    default_registry().method(method).compress(adapter, synthetic_calibration(), Target(0.3, options=options))
    measured = measure_ratio(dense, adapter).ratio
    assert abs(measured - 0.3) <= 0.005 + granularity(method, adapter), measured


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_n_m_on_a_model_with_zeros_meets_the_pattern(method, pattern):
    adapter = with_zeros("llama3", 0.30)
    dense = count_parameters(adapter)
    target = Target(0.5, pattern)
    default_registry().method(method).compress(adapter, synthetic_calibration(), target)
    check_pattern(adapter, target.n_m)
    n, m = target.n_m
    # every group keeps at most N nonzeros: r lies between the masks' floor and 1 − N/M
    most_kept = sum(lin.weight.numel() * n / m for _, lin in adapter.named_linears())
    assert 1 - most_kept / dense.blocks - 1e-9 <= measure_ratio(dense, adapter).ratio < 0.5


def test_a_pattern_that_is_not_n_m_is_refused():
    adapter = ModelAdapter(tiny_model("llama3"))
    with pytest.raises(RatioMismatch, match="is not 2:4 sparse"):
        check_pattern(adapter, (2, 4))


def test_a_miss_on_a_model_with_zeros_says_why():
    adapter = with_zeros("llama3", 0.05)
    dense = count_parameters(adapter)
    with pytest.raises(RatioMismatch, match=r"already holds 5\.\d\d% exact zeros"):
        check_ratio(0.25, 0.2, dense=dense)
    with pytest.raises(RatioMismatch) as plain:  # a dense model without zeros: no such note
        check_ratio(0.25, 0.2, dense=count_parameters(ModelAdapter(tiny_model("llama3"))))
    assert "zeros" not in str(plain.value)
