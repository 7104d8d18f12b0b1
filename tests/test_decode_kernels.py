"""The decode GEMV computes what F.linear computes, and takes only the products it can.

On a GPU the kernel runs compiled; on a CPU it runs in Triton's interpreter (conftest sets
TRITON_INTERPRET there) where Triton is installed, and are skipped where it is not.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from harness import compilation, decode_kernels
from harness.adapters import ModelAdapter
from harness.throughput import ServingStep, SpeedSpec, measure

pytestmark = pytest.mark.skipif(not decode_kernels.AVAILABLE, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(("n", "k", "bias"), [(96, 128, False), (33, 1030, True), (4096 + 8, 64, False)])
def test_the_gemv_is_the_linear_product(n, k, bias):
    torch.manual_seed(0)
    weight = torch.randn(n, k, device=DEVICE, dtype=torch.float16)
    b = torch.randn(n, device=DEVICE, dtype=torch.float16) if bias else None
    x = torch.randn(1, 1, k, device=DEVICE, dtype=torch.float16)
    y = decode_kernels.gemv(x, weight, b)
    expected = F.linear(x.float(), weight.float(), None if b is None else b.float())
    assert y.shape == (1, 1, n) and y.dtype == torch.float16
    torch.testing.assert_close(y.float(), expected, rtol=2e-3, atol=2e-3 * k**0.5)


def test_only_products_the_gemv_computes_are_taken():
    w, x = torch.randn(8, 16, dtype=torch.float16), torch.randn(1, 16, dtype=torch.float16)
    assert decode_kernels.takes_linear(x, w, None)
    assert not decode_kernels.takes_linear(torch.randn(2, 16, dtype=torch.float16), w, None)  # two rows: a GEMM
    assert not decode_kernels.takes_linear(x.float(), w.float(), None)  # fp32: cuBLAS
    assert not decode_kernels.takes_linear(x, w.t().contiguous().t(), None)  # W not contiguous along K


@pytest.mark.parametrize("arch", ["llama2", "smollm2"])
def test_a_routed_decode_step_gives_the_steps_logits(arch):
    model = tiny_model(arch).to(DEVICE, torch.float16)
    model.set_attn_implementation("sdpa")  # decode over the whole cache: no mask, the kernels' case
    adapter = ModelAdapter(model)
    step = ServingStep.for_spec(adapter, SpeedSpec("decode", 1, 24), DEVICE)
    expected = step()
    calls = []
    gemv = decode_kernels.gemv

    def counted(*args):
        calls.append(args[1].shape)
        return gemv(*args)

    try:
        decode_kernels.gemv = counted
        with decode_kernels.routed() as used:
            routed = step()
    finally:
        decode_kernels.gemv = gemv
    assert F.linear is torch.nn.functional.linear and F.linear.__name__ == "linear"  # restored
    blocks = len(adapter.blocks)
    if DEVICE.type == "cpu":  # untimed: every product on the GEMV
        assert len(calls) == 7 * blocks + 1  # q, k, v, o, gate, up, down per block; lm_head
    shapes = {f"{n}x{k}" for n, k in (lin.weight.shape for lin in model.modules() if isinstance(lin, torch.nn.Linear))}
    assert set(used) == shapes and set(used.values()) <= {"triton", "cublas"}
    torch.testing.assert_close(routed.float(), expected.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled step runs on a GPU")
def test_a_measured_decode_step_runs_on_the_chosen_kernels(monkeypatch):
    model = tiny_model("llama3").cuda().half()
    model.set_attn_implementation("sdpa")
    monkeypatch.setattr(compilation, "DECODE_KERNELS", "triton")
    result = measure(ModelAdapter(model), SpeedSpec.parse("decode@1x64"), torch.device("cuda"), repeats=3,
                     warmup=1, profile=True)
    assert result["decode_kernels"] == "triton" and result["compiled"] and result["cuda_graph"]
    kernels = result["gemv_kernels"]
    assert set(kernels.values()) <= {"triton", "cublas"} and "64x64" in kernels  # q_proj, o_proj: 64 x 64
    if "triton" in kernels.values():
        assert "_gemv_kernel" in " ".join(row["op"] for row in result["profile"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="timing needs a GPU")
def test_each_shape_takes_the_kernel_it_was_timed_faster_on():
    x = torch.randn(1, 1, 2048, device="cuda", dtype=torch.float16)
    weight = torch.randn(1536, 2048, device="cuda", dtype=torch.float16)
    kernel = decode_kernels.faster_kernel(x, weight, None)
    assert decode_kernels.TIMED[(1536, 2048, torch.float16, False, x.device)] == kernel
    expected = F.linear(x.float(), weight.float())
    torch.testing.assert_close(decode_kernels.one_row_linear(x, weight, None).float(), expected, rtol=2e-3, atol=0.1)
    # the weight copies that timing a new shape allocates do not count as a measured step's memory
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.max_memory_allocated()
    small = torch.randn(256, 2048, device="cuda", dtype=torch.float16)  # 1 MiB: ~100 copies to miss L2
    decode_kernels.faster_kernel(x, small, None)
    assert torch.cuda.max_memory_allocated() < before + 8 * 2**20
    assert decode_kernels.PEAK_BEFORE_TIMING[torch.cuda.current_device()] >= before

