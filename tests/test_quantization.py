"""Weight-only quantization: grids, the quantized linear, RTN, GPTQ and AWQ, chains, memory.

Properties a look-alike would fail: zero is on every grid (a pruned weight stays zero); GPTQ is
RTN exactly when the inputs are uncorrelated and beats it when they are not; AWQ's scale
search never does worse than no scaling and its folding leaves the block's function unchanged;
a quantized model removes no parameter (r = 0) while its bytes are the grid's.
"""

import pytest
import torch
from conftest import logits_of, synthetic_calibration, tiny_model
from torch.nn import functional as F

from baselines.awq.awq import AWQ, awq_codes, awq_grid
from baselines.gptq.gptq import GPTQ, gptq_quantize
from baselines.rtn import RoundToNearest
from baselines.sparsegpt.sparsegpt import SparseGPT
from harness.method import Chain, Target
from harness.models.adapters import ModelAdapter
from harness.quantization import Grid, dequantize, minmax_grid, round_to_nearest
from harness.serving.quantized import QuantizedLinear, pack_codes, unpack_codes
from harness.targets import count_parameters, measure_ratio


def quantized(weight, grid, bias=None):
    codes, scales, zeros = round_to_nearest(weight, grid)
    return QuantizedLinear.from_codes(codes, scales, zeros, grid.bits, grid.group_size, grid.symmetric, bias,
                                      int(torch.count_nonzero(weight)))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_roundtrip(bits):
    codes = torch.randint(0, 2**bits, (5, 13))
    assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, 13).long(), codes)


@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_grid_is_gptqs_and_holds_zero(symmetric):
    torch.manual_seed(0)
    w = torch.randn(6, 32) + 0.5
    w[0] = w[0].abs() + 0.1  # all positive: the range is stretched to 0
    grid = Grid(4, -1, symmetric)
    scale, zero = minmax_grid(w, grid)
    lo, hi = torch.minimum(w.min(1).values, torch.tensor(0.0)), torch.maximum(w.max(1).values, torch.tensor(0.0))
    if symmetric:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
        assert torch.equal(zero, torch.full_like(zero, 8.0))
    else:
        assert torch.equal(zero, torch.round(-lo / scale))
    assert torch.allclose(scale, (hi - lo) / 15)
    codes, scales, zeros = round_to_nearest(torch.cat([w, torch.zeros(6, 1)], 1), grid)
    assert torch.all(dequantize(codes, scales, zeros)[:, -1] == 0)  # an exact zero stays exactly zero
    error = (dequantize(codes, scales, zeros)[:, :-1] - w).abs()
    # symmetric, the reference keeps an all-positive row's range at [0, max] around the middle
    # zero point: half its grid lies below zero and its top half is clipped (as GPTQ's quantizer)
    rows = slice(1, None) if symmetric else slice(None)
    assert torch.all(error[rows] <= scales[rows] / 2 + 1e-6)


def test_quantized_linear_is_its_dequantised_weight_and_counts_bytes():
    torch.manual_seed(0)
    linear = torch.nn.Linear(200, 48, bias=True)
    grid = Grid(4, 64)
    q = quantized(linear.weight.data, grid, linear.bias)
    x = torch.randn(3, 200)
    assert torch.equal(q(x), F.linear(x, q.dequantize(), q.bias))
    assert q.scales.shape == (48, 4)  # 200 columns: three groups of 64, a last one of 8
    # 4-bit codes, fp16 scale + zero per (row, group), fp16 bias
    assert q.storage_bytes() == 48 * 200 // 2 + 48 * 4 * 4 + 48 * 2
    assert q.storage_bytes() == pytest.approx(48 * 200 * Grid(4, 64).bits_per_weight(200) / 8 + 96, rel=0.05)
    sym = quantized(linear.weight.data, Grid(8, -1, True))
    assert sym.storage_bytes() == 48 * 200 + 48 * 2  # int8 codes, one fp16 scale per row


def test_two_four_quantized_weight_stores_its_kept_half():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    w.view(16, -1, 4)[:, :, :2] = 0  # exactly 2:4
    q = quantized(w, Grid(4, 32))
    assert bool((q.dequantize()[w == 0] == 0).all())  # pruned stays pruned (small kept values may round to 0)
    assert q.storage_bytes() == 16 * 32 // 2 + 16 * 64 // 8 + 16 * 2 * 4


def test_quantization_removes_no_parameter_and_saves_its_bytes(arch):
    model = tiny_model(arch)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    RoundToNearest().compress(adapter, None, Target(0.0, options={"bits": 4, "group_size": 32}))
    measured = measure_ratio(dense, adapter)
    assert measured.ratio == 0.0 and measured.whole_model == 0.0  # a rounded-to-zero weight is not removed
    linears = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert linears and measured.compressed.block_bytes == sum(m.storage_bytes() for m in linears) + (
        dense.block_bytes - sum(2 * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
                                for m in linears))
    assert 0.6 < measured.memory_ratio < 0.75  # 4 bits + 32-bit scale-and-zero per 32 columns: 5/16 of fp16


def test_gptq_is_rtn_when_inputs_are_uncorrelated():
    """H ∝ I: U is diagonal, no error reaches another column: GPTQ rounds to the nearest."""
    torch.manual_seed(0)
    w = torch.randn(32, 256)
    grid = Grid(4, 128)
    codes, scales, zeros, g_idx = gptq_quantize(w, torch.eye(256, dtype=torch.float64) * 7, 100, grid)
    rtn = round_to_nearest(w, grid)
    assert g_idx is None
    assert torch.equal(codes, rtn[0]) and torch.allclose(scales, rtn[1]) and torch.equal(zeros, rtn[2])


@pytest.mark.parametrize("act_order,static_groups", [(False, False), (True, False), (True, True)])
def test_gptq_beats_rtn_on_correlated_inputs(act_order, static_groups):
    torch.manual_seed(0)
    x = torch.randn(2048, 128) @ torch.randn(128, 128) * 0.3 + torch.randn(128)  # correlated, uneven scales
    w = torch.randn(64, 128)
    gram = (x.T @ x).double()
    grid = Grid(3, 32)
    codes, scales, zeros, g_idx = gptq_quantize(w, gram, 2048, grid, act_order=act_order, static_groups=static_groups)
    q = QuantizedLinear.from_codes(codes, scales, zeros, 3, 32, False, None, w.numel(), g_idx)
    assert (g_idx is not None) == (act_order and not static_groups)
    rtn = quantized(w, grid)
    error = (x @ (q.dequantize() - w).T).pow(2).sum()
    assert error < 0.8 * (x @ (rtn.dequantize() - w).T).pow(2).sum()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("act_order,static_groups,keep_zeros,group", [
    (False, False, False, 128), (True, False, False, 64), (True, True, False, 32), (False, False, True, 256)])
def test_a_graphed_sweep_gives_the_eager_sweeps_codes(act_order, static_groups, keep_zeros, group):
    """Replaying a captured block sweep runs the same kernels on the same values: the same codes,
    scales and zero points bit for bit, for every linear of the shape that shares the graph."""
    torch.manual_seed(0)
    x = (torch.randn(2048, 640) @ torch.randn(640, 640) * 0.2).cuda()
    gram = (x.T @ x).double()
    graphs = {}
    for seed in (1, 2):  # the second linear of this shape replays the first one's graph
        torch.manual_seed(seed)
        w = torch.randn(96, 640, device="cuda")
        if keep_zeros:
            w.view(96, -1, 4)[:, :, 1::2] = 0
        options = (128, 0.01, act_order, static_groups, keep_zeros)
        eager = gptq_quantize(w, gram, 2048, Grid(4, group), *options)
        graphed = gptq_quantize(w, gram, 2048, Grid(4, group), *options, graphs=graphs)
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(eager, graphed))
    assert len(graphs) == 1


def test_gptq_keeps_a_pruned_mask():
    torch.manual_seed(0)
    x = torch.randn(512, 64) @ torch.randn(64, 64)
    w = torch.randn(16, 64)
    w.view(16, -1, 4)[:, :, 1::2] = 0
    codes, scales, zeros, _ = gptq_quantize(w, (x.T @ x).double(), 512, Grid(4, 32), keep_zeros=True)
    q = QuantizedLinear.from_codes(codes, scales, zeros, 4, 32, False, None, int(torch.count_nonzero(w)))
    assert bool((q.dequantize()[w == 0] == 0).all())


def test_awq_grid_is_the_references():
    w = torch.tensor([[0.5, 1.0, 2.0, 3.5], [-1.0, -0.2, 0.3, 0.9]])
    scale, zero = awq_grid(w, Grid(2, -1))
    assert torch.allclose(scale, torch.tensor([3.0 / 3, 1.9 / 3]))  # (max − min) / (2^b − 1), no stretch to 0
    assert torch.equal(zero, torch.tensor([0.0, 2.0]))  # clamp(−round(min / s), 0, 2^b − 1)
    codes, _, _ = awq_codes(w, Grid(2, -1, True))
    assert codes.min() >= 0 and codes.max() <= 3


def test_awq_folding_keeps_the_function_and_search_never_loses_to_rtn():
    torch.manual_seed(0)
    model = tiny_model("llama3")
    adapter = ModelAdapter(model)
    before = logits_of(model)
    block = adapter.blocks[0]
    linears = adapter.linears(block)
    scales = torch.rand(linears["gate"].in_features) + 0.5
    AWQ.fold(("norm", adapter.mlp_norm(block)), [linears["gate"], linears["up"]], scales)
    AWQ.fold(("rows", linears["up"]), [linears["down"]], torch.rand(linears["down"].in_features) + 0.5)
    assert torch.allclose(logits_of(model), before, atol=1e-4)
    # the clip search includes "no clipping" (i = 0): its error is never above plain rounding's
    w, x, grid = linears["down"].weight.data, torch.randn(300, linears["down"].in_features), Grid(3, 32)
    bounds = AWQ.search_clip(w, x, grid, {"n_grid": 20, "max_shrink": 0.5, "clip_tokens": 512})
    from baselines.awq.awq import fake_quantize

    def err(weight):
        return (x @ (fake_quantize(weight, grid) - w).T).pow(2).sum()

    assert err(AWQ.clipped(w, bounds)) <= err(w) + 1e-6


@pytest.mark.parametrize("method", [RoundToNearest(), GPTQ(), AWQ()])
def test_quantization_methods_on_every_architecture(method, arch):
    model = tiny_model(arch)
    adapter = ModelAdapter(model)
    if method.unsupported(adapter.arch):
        pytest.skip(method.unsupported(adapter.arch))
    before = logits_of(model)
    dense = count_parameters(adapter)
    calibration = synthetic_calibration(8, 32, batch_size=4)
    method.compress(adapter, calibration, Target(0.0, options={"bits": 8, "group_size": 32}))
    assert all(isinstance(lin, QuantizedLinear) for _, lin in adapter.named_linears())
    assert measure_ratio(dense, adapter).ratio == 0.0
    after = logits_of(model)
    assert (after - before).abs().max() < 0.05 * before.abs().max()  # 8 bits: close to dense


def test_chain_prunes_then_quantizes_with_the_mask_kept():
    model = tiny_model("llama2")
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    chain = Chain([SparseGPT(), GPTQ()])
    target = Target(0.5, "2:4", {"gptq": {"bits": 4, "group_size": 32}})
    assert chain.setting_label(target) == "2:4+w4g32"
    report = chain.compress(adapter, synthetic_calibration(8, 32, batch_size=4), target)
    assert report.knobs["gptq"]["keep_zeros"] is True and "sparsegpt" in report.knobs
    measured = measure_ratio(dense, adapter)
    assert measured.ratio == pytest.approx(0.5, abs=0.01)
    for _, lin in adapter.named_linears():
        w = lin.dequantize()
        assert bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())
    # per weight: half a 4-bit code (2 bits), a 2-bit position per kept value (1 bit), a 32-bit
    # scale-and-zero per 32 columns (1 bit): 4 of fp16's 16 bits
    assert 1 - measured.memory_ratio == pytest.approx(4 / 16, abs=0.01)


def test_chain_refuses_quantization_first_and_the_reference():
    from baselines.dense import Dense

    with pytest.raises(ValueError, match="must come last"):
        Chain([GPTQ(), SparseGPT()])
    with pytest.raises(ValueError, match="dense reference"):
        Chain([Dense(), GPTQ()])
