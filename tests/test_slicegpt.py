"""SliceGPT: invariance, where slicing happens, the analytic count, and the ratio solve."""

import pytest
import torch
from conftest import logits_of as logits
from conftest import synthetic_calibration as calibration
from conftest import tiny_model

from baselines.slicegpt.slicegpt import (
    SliceGPT,
    analytic_block_parameters,
    make_rotation_invariant,
    width_for_slicing,
)
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.targets import count_parameters, measure_ratio


def test_folding_norms_is_exact(arch):
    model = tiny_model(arch)
    before = logits(model)
    make_rotation_invariant(ModelAdapter(model))
    torch.testing.assert_close(logits(model), before, rtol=1e-4, atol=1e-4)


def test_rotation_without_slicing_equals_dense(arch):
    model = tiny_model(arch)
    dense = logits(model)
    adapter = ModelAdapter(model)
    SliceGPT().compress(adapter, calibration(), Target(0.0, options={"width": adapter.hidden_size}))
    # rotated by non-trivial Qs (not identity) ...
    shortcut = adapter.blocks[0].attn_shortcut
    assert not torch.allclose(shortcut, torch.eye(shortcut.shape[0]), atol=1e-2)
    # ... and still the same function
    torch.testing.assert_close(logits(model), dense, rtol=1e-4, atol=1e-4)


def test_slicing_shrinks_hidden_width_everywhere_and_nowhere_else(arch):
    model = tiny_model(arch)
    adapter = ModelAdapter(model)
    dense_shapes = {n: tuple(lin.weight.shape) for n, lin in adapter.named_linears()}
    dense_count = count_parameters(adapter)
    d, width = adapter.hidden_size, 48
    expected = analytic_block_parameters(adapter, width)
    SliceGPT().compress(adapter, calibration(), Target(0.0, options={"width": width}))
    readers = {r for rs in adapter.arch.norm_readers.values() for r in rs}
    last = len(adapter.blocks) - 1
    for name, lin in adapter.named_linears():
        _, i, role = name.split(".")
        out_d, in_d = dense_shapes[name]
        if role in readers:  # input columns sliced, output (heads, channels) untouched
            assert tuple(lin.weight.shape) == (out_d, width), name
        else:  # writers: output rows sliced, except into the (unsliced) head
            rows = d if int(i) == last and (role == "down" or adapter.arch.parallel_block) else width
            assert tuple(lin.weight.shape) == (rows, in_d), name
    assert adapter.embeddings.weight.shape == (320, width)
    assert adapter.lm_head.weight.shape == (320, d)
    shortcuts = [p for b in adapter.blocks for n, p in b.named_parameters() if "shortcut" in n]
    assert shortcuts and all(min(p.shape) == width for p in shortcuts)
    counted = count_parameters(adapter)
    assert counted.blocks == expected  # analytic count, shortcut matrices included
    assert measure_ratio(dense_count, adapter).ratio == pytest.approx(1 - expected / dense_count.blocks)
    assert torch.isfinite(logits(model)).all()


def test_ratio_target_is_met_counting_shortcuts():
    model = tiny_model("llama3")
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    report = SliceGPT().compress(adapter, calibration(), Target(0.25))
    assert abs(measure_ratio(dense, adapter).ratio - 0.25) <= 0.005 + 1 / 64
    # shortcuts cost parameters: the slicing fraction exceeds the ratio it buys
    assert report.knobs["slicing"] > 0.25


def test_native_slicing_knob_follows_reference_rounding():
    assert width_for_slicing(4096, 0.25) == 3072
    assert width_for_slicing(576, 0.3) == 400  # int(403.2) = 403 → multiple of 8
    assert width_for_slicing(576, 0.3, round_interval=1) == 403
