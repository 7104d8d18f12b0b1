"""Low-bit kernels equal the reference path (the dequantised weight under F.linear).

The int4 kernels (torch's tinygemm, gemlite's Triton kernels) run on CUDA only: those tests
skip elsewhere, and gemlite's where the package (the ``gpu`` extra) is not installed. Tolerance: the
kernel reads bfloat16 activations and bfloat16 scales and offsets, so its output may differ
from the float16 reference by bfloat16's rounding of the inputs (2⁻⁸ relative) summed over a
row: we allow 2 % of the output's largest magnitude.
"""

import pytest
import torch
from conftest import tiny_model

from baselines.rtn import RoundToNearest
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.quantization import Grid, round_to_nearest
from harness.serving.quantized import (
    GemliteLinear,
    Int8WeightOnlyLinear,
    QuantizedLinear,
    TinyGemmLinear,
    _gemlite_available,
    kernel_for,
    quantized_kernels,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def quantized(out, inp, grid, device="cpu", dtype=torch.float16, bias=False, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(out, inp, device=device)
    codes, scales, zeros = round_to_nearest(w, grid)
    b = torch.randn(out, device=device).to(dtype) if bias else None
    return QuantizedLinear.from_codes(codes, scales.to(dtype), zeros, grid.bits, grid.group_size, grid.symmetric,
                                      b, w.numel())


def close(kernel, reference):
    assert (kernel.float() - reference.float()).abs().max() <= 0.02 * reference.float().abs().max()


@pytest.mark.parametrize("bias", [False, True])
def test_int8_weight_only_equals_the_reference(bias):
    q = quantized(96, 256, Grid(8, -1, True), dtype=torch.float32, bias=bias)
    kernel = Int8WeightOnlyLinear(q)
    x = torch.randn(5, 256)
    torch.testing.assert_close(kernel(x), q(x), rtol=1e-4, atol=1e-4)
    assert sum(t.numel() * t.element_size() for t in kernel.buffers()) <= q.storage_bytes() * 2


def test_formats_without_a_kernel_stay_on_the_reference_path():
    model = torch.nn.Sequential(quantized(64, 128, Grid(8, 32), dtype=torch.float32),
                                quantized(64, 128, Grid(3, 32), dtype=torch.float32))
    with quantized_kernels(model) as done:
        assert done["converted"] == 0 and sum(done["skipped"].values()) == 2
        assert all(isinstance(m, QuantizedLinear) for m in model)


def test_kernels_are_swapped_in_and_back():
    model = torch.nn.Sequential(quantized(64, 128, Grid(8, -1, True), dtype=torch.float32))
    original = model[0]
    with quantized_kernels(model) as done:
        assert done["routes"] and isinstance(model[0], Int8WeightOnlyLinear)
    assert model[0] is original


@cuda
@pytest.mark.parametrize("inp,group,symmetric", [(576, 128, False), (1536, 64, False), (512, 32, True), (256, 256, False)])
def test_tinygemm_equals_the_reference(inp, group, symmetric):
    q = quantized(192, inp, Grid(4, group, symmetric), device="cuda", bias=True)
    kernel = TinyGemmLinear(q)
    for rows in (1, 16, 300):
        x = torch.randn(rows, inp, device="cuda", dtype=torch.float16)
        close(kernel(x), q(x))


@cuda
def test_int8_kernel_on_cuda_equals_the_reference():
    q = quantized(256, 512, Grid(8, -1, True), device="cuda")
    kernel = Int8WeightOnlyLinear(q)
    x = torch.randn(7, 512, device="cuda", dtype=torch.float16)
    close(kernel(x), q(x))


@cuda
def test_a_quantized_model_measures_on_its_kernels_and_keeps_its_logits():
    from harness.serving.step import SpeedSpec
    from harness.serving.timing import measure_model

    model = tiny_model("llama3").half().cuda()
    adapter = ModelAdapter(model)
    RoundToNearest().compress(adapter, None, Target(0.0, options={"bits": 4, "group_size": 32}))
    ids = torch.randint(0, 320, (2, 24), device="cuda")
    with torch.no_grad():
        reference = model(ids).logits
    results = measure_model(adapter, "unstructured", [SpeedSpec.parse("decode@1x64")], torch.device("cuda"))
    kernels = results["decode@1x64"]["quant_kernels"]
    int4 = {name: n for name, n in kernels["routes"].items() if name.startswith("int4 ")}
    assert kernels["converted"] > 0 and sum(int4.values()) == kernels["converted"], kernels
    with quantized_kernels(model, 1, torch.float16) as routes:  # one row per product: the int4 kernels' case
        assert any(isinstance(m, (TinyGemmLinear, GemliteLinear)) for m in model.modules()), routes
        with torch.no_grad():
            close(model(ids).logits, reference)
    assert not any(isinstance(m, (TinyGemmLinear, GemliteLinear)) for m in model.modules())


gemlite = pytest.mark.skipif(not (torch.cuda.is_available() and _gemlite_available()),
                             reason="needs a CUDA GPU and the gemlite package (the gpu extra)")


@gemlite
@pytest.mark.parametrize("bits,inp,group,symmetric", [(4, 512, 128, False), (4, 1024, 64, True),
                                                      (4, 4096, 4096, False), (8, 512, -1, True)])
def test_gemlite_equals_the_reference(bits, inp, group, symmetric):
    q = quantized(384, inp, Grid(bits, group, symmetric), device="cuda", bias=bits == 8)
    kernel = GemliteLinear(q)
    for rows in (1, 4, 16, 300):  # each of gemlite's kernels: GEMV, split-K GEMV and GEMM, tiled GEMM
        x = torch.randn(rows, inp, device="cuda", dtype=torch.float16)
        close(kernel(x), q(x))


@gemlite
def test_gemlite_takes_8_bits_per_row_only():
    # in groups its 8-bit products differ from the reference path's: refused, so no speed row runs them
    with pytest.raises(ValueError, match="one scale per row"):
        GemliteLinear(quantized(384, 768, Grid(8, 128), device="cuda"))


@gemlite
def test_gemlite_refuses_a_narrower_last_group():
    with pytest.raises(ValueError, match="divide the input width"):
        GemliteLinear(quantized(64, 576, Grid(4, 128), device="cuda"))


@cuda
def test_each_product_goes_to_the_fastest_candidate_it_timed():
    q = quantized(512, 1024, Grid(4, 128), device="cuda")
    timed = {}
    chosen = kernel_for(q, 1, torch.float16, timed)
    (key, name), = timed.items()
    assert key == "512x1024/w4g128@1" and (chosen is None) == (name == "dequantize")
    assert chosen is None or chosen.kernel == name


def test_a_shape_timed_once_builds_only_its_choice_for_the_next_linears():
    q = quantized(64, 128, Grid(8, -1, True), dtype=torch.float32)
    timed = {"64x128/w8g128s@1": "int8 mm (inductor-fused dequant)"}  # as a first linear's timing left it
    chosen = kernel_for(q, 1, torch.float32, timed)  # no timing: this runs on a CPU
    assert isinstance(chosen, Int8WeightOnlyLinear) and not chosen.packed_op
    assert kernel_for(q, 1, torch.float32, {"64x128/w8g128s@1": "dequantize"}) is None
