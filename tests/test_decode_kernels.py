"""The decode kernels compute what F.linear and SDPA compute, and take only the calls they can.

On a GPU the kernel runs compiled; on a CPU it runs in Triton's interpreter (conftest sets
TRITON_INTERPRET there) where Triton is installed, and are skipped where it is not.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from harness.models.adapters import ModelAdapter
from harness.serving import decode_kernels
from harness.serving.config import ServingConfig
from harness.serving.step import ServingStep, SpeedSpec, capture_graph
from harness.serving.timing import measure

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


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "length", "dim", "v_dim"),
                         [(1, 4, 4, 37, 32, 32), (2, 8, 2, 100, 64, 64), (1, 2, 1, 1, 16, 16), (1, 2, 2, 512, 128, 128),
                          (1, 3, 3, 50, 128, 96), (1, 2, 1, 20, 24, 40)])  # sliced heads: sizes unequal, not 2^n
def test_the_decode_attention_is_sdpa_for_one_query(batch, heads, kv_heads, length, dim, v_dim):
    torch.manual_seed(0)
    q = torch.randn(batch, heads, 1, dim, device=DEVICE, dtype=torch.float16)
    k = torch.randn(batch, kv_heads, length, dim, device=DEVICE, dtype=torch.float16)
    v = torch.randn(batch, kv_heads, length, v_dim, device=DEVICE, dtype=torch.float16)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=heads != kv_heads)
    for config in decode_kernels.ATTENTION_CONFIGS:  # 1 to 16 chunks per row, merged by the last
        out = decode_kernels.decode_attention(q, k, v, None, config)
        assert out.shape == (batch, heads, 1, v_dim) and out.dtype == q.dtype
        torch.testing.assert_close(out.float(), expected, rtol=2e-3, atol=2e-3)
        assert decode_kernels._COUNTS[q.device].count_nonzero() == 0  # every row's count reset for the next call
    scaled = decode_kernels.decode_attention(q, k, v, 0.5)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.5, enable_gqa=heads != kv_heads)
    torch.testing.assert_close(scaled.float(), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("length", [512, 3])
def test_chunks_cover_the_cache_none_empty(length):
    for block, most, _ in decode_kernels.ATTENTION_CONFIGS:
        splits, chunk = decode_kernels.attention_splits(length, block, most)
        assert 1 <= splits <= most and chunk % block == 0 and (splits - 1) * chunk < length <= splits * chunk


def test_only_attention_the_kernel_computes_is_taken():
    q, kv = torch.randn(1, 8, 1, 64, dtype=torch.float16), torch.randn(1, 2, 30, 64, dtype=torch.float16)
    takes = decode_kernels.takes_attention
    assert takes(q, kv, kv, enable_gqa=True)
    assert not takes(q, kv, kv)  # fewer key/value heads without GQA asked for: SDPA refuses it too
    assert not takes(q, kv, kv, attn_mask=torch.zeros(1, 1, 1, 30, dtype=torch.float16), enable_gqa=True)  # masked
    assert not takes(q, kv, kv, is_causal=True, enable_gqa=True)  # one query sees only the first key: not decode
    assert not takes(q, kv, kv, dropout_p=0.1, enable_gqa=True)
    assert not takes(torch.randn(1, 8, 2, 64, dtype=torch.float16), kv, kv, enable_gqa=True)  # two queries: prefill
    assert not takes(q.float(), kv.float(), kv.float(), enable_gqa=True)
    assert takes(q[..., :48], kv[..., :48], kv[..., :40], enable_gqa=True)  # sliced heads
    assert not takes(q[..., :48], kv, kv, enable_gqa=True)  # q and k disagree
    mha = torch.randn(1, 8, 30, 64, dtype=torch.float16)
    assert takes(q, mha, mha) and not takes(q, mha.transpose(2, 3).contiguous().transpose(2, 3), mha)


@pytest.mark.parametrize("arch", ["llama2", "smollm2"])
def test_a_routed_decode_step_gives_the_steps_logits(arch):
    model = tiny_model(arch).to(DEVICE, torch.float16)
    model.set_attn_implementation("sdpa")  # decode over the whole cache: no mask, the kernels' case
    adapter = ModelAdapter(model)
    step = ServingStep.for_spec(adapter, SpeedSpec("decode", 1, 24), DEVICE)
    expected = step()
    calls = {"gemv": [], "decode_attention": []}
    kernels = {name: getattr(decode_kernels, name) for name in calls}

    def counted(name):
        return lambda *args: calls[name].append(args[1].shape) or kernels[name](*args)

    try:
        for name in calls:
            setattr(decode_kernels, name, counted(name))
        with decode_kernels.routed() as used:
            routed = step()
    finally:
        for name, kernel in kernels.items():
            setattr(decode_kernels, name, kernel)
    assert F.linear is torch.nn.functional.linear and F.linear.__name__ == "linear"  # restored
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"
    blocks, config = len(adapter.blocks), model.config
    if DEVICE.type == "cpu":  # untimed: every product on the GEMV, every attention on the kernel
        assert len(calls["gemv"]) == 7 * blocks + 1  # q, k, v, o, gate, up, down per block; lm_head
        assert len(calls["decode_attention"]) == blocks
    shapes = {f"{n}x{k}" for n, k in (lin.weight.shape for lin in model.modules() if isinstance(lin, torch.nn.Linear))}
    assert set(used["products"]) == shapes
    assert all(kernel == "cublas" or kernel.startswith("triton ") for kernel in used["products"].values())
    head = config.hidden_size // config.num_attention_heads
    assert list(used["attention"]) == [f"1x{config.num_attention_heads}/{config.num_key_value_heads}x24x{head}"]
    assert all(kernel == "sdpa" or kernel.startswith("triton ") for kernel in used["attention"].values())
    torch.testing.assert_close(routed.float(), expected.float(), rtol=1e-2, atol=1e-2)


def test_a_pinned_sdpa_kernel_keeps_attention():
    with decode_kernels.routed(attention=False):
        assert F.linear.__name__ == "routed_linear"
        assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled step runs on a GPU")
def test_a_measured_decode_step_runs_on_the_chosen_kernels(monkeypatch):
    model = tiny_model("llama3").cuda().half()
    model.set_attn_implementation("sdpa")
    result = measure(ModelAdapter(model), SpeedSpec.parse("decode@1x64"), torch.device("cuda"),
                     ServingConfig(decode_kernels="triton"), repeats=3,
                     warmup=1, profile=True)
    assert result["decode_kernels"] == "triton" and result["compiled"] and result["cuda_graph"]
    kernels = result["gemv_kernels"]
    assert "64x64" in kernels  # q_proj, o_proj: 64 x 64
    assert all(kernel == "cublas" or kernel.startswith("triton ") for kernel in kernels.values())
    attention = result["attention_kernels"]
    assert list(attention) == ["1x4/2x64x16"] and set(attention.values()) <= {"sdpa", *map(
        decode_kernels.attention_name, decode_kernels.ATTENTION_CONFIGS)}
    ops = " ".join(row["op"] for row in result["profile"])
    if any(kernel.startswith("triton") for kernel in kernels.values()):
        assert "_gemv_kernel" in ops
    if attention["1x4/2x64x16"] != "sdpa":
        assert "_attention_kernel" in ops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="timing needs a GPU")
def test_each_shape_takes_the_kernel_it_was_timed_fastest_on():
    x = torch.randn(1, 1, 2048, device="cuda", dtype=torch.float16)
    weight = torch.randn(1536, 2048, device="cuda", dtype=torch.float16)
    config = decode_kernels.fastest_kernel(x, weight, None)
    assert config is None or config in decode_kernels.GEMV_CONFIGS
    assert decode_kernels.TIMED[(1536, 2048, torch.float16, False, x.device)] == config
    expected = F.linear(x.float(), weight.float())
    torch.testing.assert_close(decode_kernels.one_row_linear(x, weight, None).float(), expected, rtol=2e-3, atol=0.1)
    for tiles in decode_kernels.GEMV_CONFIGS:  # every setting timed computes the product
        torch.testing.assert_close(decode_kernels.gemv(x, weight, None, tiles).float(), expected, rtol=2e-3, atol=0.1)
    # the ~100 MiB of weight copies that timing a new shape allocates do not count as a measured
    # step's memory (what stays allocated does: a new stream's cuBLAS workspace, for one)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.max_memory_allocated()
    small = torch.randn(256, 2048, device="cuda", dtype=torch.float16)  # 1 MiB: ~100 copies to miss L2
    decode_kernels.fastest_kernel(x, small, None)
    assert torch.cuda.max_memory_allocated() < torch.cuda.memory_allocated() + 8 * 2**20
    assert decode_kernels.PEAK_BEFORE_TIMING[torch.cuda.current_device()] >= before



@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs and the chunks' merge order need a GPU")
def test_the_attention_merges_right_on_every_replay():
    # the program counting last merges the chunks: a missed store would show as a wrong row on some replay
    torch.manual_seed(0)
    q = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.float16)
    caches = [[torch.randn(1, 32, 512, 128, device="cuda", dtype=torch.float16) for _ in range(2)] for _ in range(8)]
    expected = [F.scaled_dot_product_attention(q.float(), k.float(), v.float()) for k, v in caches]
    for config in decode_kernels.ATTENTION_CONFIGS:
        outs = []
        replay = capture_graph(lambda: outs.append([decode_kernels.decode_attention(q, k, v, None, config)  # noqa: B023
                                                    for k, v in caches]), warmup=1)
        for _ in range(50):
            replay()
            for out, reference in zip(outs[-1], expected):
                torch.testing.assert_close(out.float(), reference, rtol=2e-3, atol=2e-3)
    config = decode_kernels.fastest_attention(q, *caches[0], None)
    assert config is None or config in decode_kernels.ATTENTION_CONFIGS
    assert decode_kernels.TIMED_ATTENTION[(*q.shape, *caches[0][0].shape, 128, q.dtype, None, q.device)] == config


def test_sliced_heads_take_the_decode_attention():
    # IntraSlice's value heads are narrower than its query/key heads and need not be a power of two
    from harness.models.attention import SlimValueAttention

    torch.manual_seed(0)
    model = tiny_model("llama3")
    model.set_attn_implementation("sdpa")  # decode over the whole cache: no mask
    adapter = ModelAdapter(model)
    v_dim = 12  # head_dim 16
    for block in adapter.blocks:
        attention = SlimValueAttention(adapter, block, v_dim)
        attention.v_proj = torch.nn.Linear(64, adapter.num_kv_heads * v_dim, bias=False)
        attention.o_proj = torch.nn.Linear(adapter.num_heads * v_dim, 64, bias=False)
        adapter.replace_attention(block, attention)
    adapter.model.to(DEVICE, torch.float16)
    step = ServingStep.for_spec(adapter, SpeedSpec("decode", 1, 24), DEVICE)
    expected = step()
    with decode_kernels.routed() as used:
        routed = step()
    assert list(used["attention"]) == [f"1x{adapter.num_heads}/{adapter.num_kv_heads}x24x16"]
    torch.testing.assert_close(routed.float(), expected.float(), rtol=1e-2, atol=1e-2)
