import pytest
import torch
from conftest import tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.sparsity import prune_mask
from harness.targets import RatioMismatch, check_ratio, count_parameters, measure_ratio


def _analytic_block_params(model) -> int:
    total = 0
    for block in ModelAdapter(model).blocks:
        for lin in ModelAdapter(model).linears(block).values():
            total += lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
    return total


def test_dense_count_is_the_analytic_count(any_arch):
    model = tiny_model(any_arch)
    count = count_parameters(ModelAdapter(model))
    assert count.blocks == _analytic_block_params(model)
    # nonzeros (the padding row of an embedding is zero); a tied head counted once
    assert count.total == sum(int(p.count_nonzero()) for p in model.parameters())
    assert count.lm_head == (0 if ModelAdapter(model).tied_embeddings else sum(
        int(p.count_nonzero()) for p in model.lm_head.parameters()))


def test_measured_ratio_counts_zeros_shapes_and_added_matrices():
    model = tiny_model("llama2")
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    assert measure_ratio(dense, adapter).ratio == 0
    block = adapter.blocks[0]
    up = adapter.linears(block)["up"]
    up.weight.data[:, : up.in_features // 2] = 0  # masked: zeros do not count
    removed = up.weight.numel() // 2
    down = adapter.linears(block)["down"]
    adapter.replace_linear(block, "down", torch.nn.Linear(down.in_features // 4, down.out_features, bias=False))
    removed += down.weight.numel() * 3 // 4  # sliced: actual shape counts
    block.register_buffer("shortcut", torch.randn(64, 48))  # an added matrix counts
    removed -= 64 * 48
    measured = measure_ratio(dense, adapter)
    assert measured.ratio == pytest.approx(removed / dense.blocks)
    assert measured.compressed.blocks == dense.blocks - removed
    assert 0 < measured.whole_model < measured.ratio


def test_ratio_tolerance_is_half_a_point():
    check_ratio(0.3049, 0.3)
    with pytest.raises(RatioMismatch, match="misses the target"):
        check_ratio(0.306, 0.3)


@pytest.mark.parametrize("n_m", [(2, 4), (4, 8)])
def test_n_m_masks_are_exact(n_m):
    scores = torch.rand(16, 64)
    mask = prune_mask(scores, 0.5, n_m)
    n, m = n_m
    kept = (~mask).reshape(16, 64 // m, m).sum(-1)
    assert bool((kept == n).all())
    # the pruned ones are the lowest of their group
    groups = scores.reshape(16, -1, m)
    g_mask = mask.reshape(16, -1, m)
    assert bool((groups.masked_fill(~g_mask, -1).amax(-1) <= groups.masked_fill(g_mask, 2).amin(-1)).all())


def test_row_and_layer_masks_hit_the_sparsity():
    scores = torch.rand(10, 100)
    row = prune_mask(scores, 0.3, per_row=True)
    assert bool((row.sum(1) == 30).all())
    layer = prune_mask(scores, 0.3, per_row=False)
    assert int(layer.sum()) == 300
    assert scores[layer].max() <= scores[~layer].min()


def test_mask_sparsity_accounts_for_biases():
    adapter = ModelAdapter(tiny_model("qwen2"))  # q/k/v carry biases
    target = Target(0.3)
    for _, lin in adapter.named_linears():
        s = target.mask_sparsity(lin)
        assert s > 0.3 if lin.bias is not None else s == 0.3
        lin.weight.data[prune_mask(lin.weight.abs(), s, per_row=False)] = 0
    dense = count_parameters(ModelAdapter(tiny_model("qwen2")))
    assert measure_ratio(dense, adapter).ratio == pytest.approx(0.3, abs=1e-3)


def test_stored_bytes_follow_how_a_serving_engine_keeps_each_weight():
    """The memory ratio: the dense blocks' half-precision bytes against the compressed ones as
    stored. Unstructured zeros stored densely save nothing, an exactly 2:4 weight keeps half its
    values and one bit of position per element, a sliced weight its own shape; a quantized module
    states its own bytes."""
    model = tiny_model("qwen2")  # q/k/v biases
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    weights = sum(lin.weight.numel() for _, lin in adapter.named_linears())
    biases = sum(lin.bias.numel() for _, lin in adapter.named_linears() if lin.bias is not None)
    assert dense.block_bytes == 2 * (weights + biases)
    assert measure_ratio(dense, adapter).memory_ratio == 0
    with torch.no_grad():  # unstructured: half the weights zeroed, nothing saved in storage
        for _, lin in adapter.named_linears():
            lin.weight.mul_(prune_mask(lin.weight.abs(), 0.5, per_row=False).logical_not())
    unstructured = measure_ratio(dense, adapter)
    assert unstructured.ratio > 0.45 and unstructured.memory_ratio == 0
    model = tiny_model("qwen2")
    adapter = ModelAdapter(model)
    with torch.no_grad():
        for _, lin in adapter.named_linears():
            lin.weight.mul_(prune_mask(lin.weight.abs(), 0.5, n_m=(2, 4)).logical_not())
    two_four = measure_ratio(dense, adapter)
    assert two_four.compressed.block_bytes == weights + weights // 8 + 2 * biases
    assert two_four.memory_ratio == pytest.approx(1 - (1.125 * weights + 2 * biases) / (2 * (weights + biases)))
    block = adapter.blocks[0]
    down = adapter.linears(block)["down"]

    class Packed(torch.nn.Module):  # a module that keeps its weight its own way (4 bits a value)
        def __init__(self, linear):
            super().__init__()
            self.linear = linear

        def storage_bytes(self):
            return self.linear.weight.numel() // 2

        def forward(self, x):
            return self.linear(x)

    adapter.replace_linear(block, "down", Packed(down))
    packed = measure_ratio(dense, adapter)
    assert packed.compressed.block_bytes == two_four.compressed.block_bytes - (down.weight.numel() * 9 // 8) \
        + down.weight.numel() // 2


def test_a_sliced_model_saves_in_storage_what_it_removed():
    from conftest import synthetic_calibration

    from baselines.slicegpt import SliceGPT

    model = tiny_model("llama2")
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    SliceGPT().compress(adapter, synthetic_calibration(), Target(0.3))
    measured = measure_ratio(dense, adapter)
    # no weight holds zeros: the stored elements are the counted ones
    assert measured.memory_ratio == pytest.approx(measured.ratio, abs=1e-9)
