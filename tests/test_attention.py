import torch
from conftest import tiny_model

from harness.adapters import ModelAdapter
from harness.attention import SlimValueAttention


def logits(model):
    ids = torch.randint(0, 320, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(ids).logits


def test_slim_attention_at_full_width_equals_the_original(arch):
    model = tiny_model(arch)
    dense = logits(model)
    adapter = ModelAdapter(model)
    for block in adapter.blocks:
        adapter.replace_attention(block, SlimValueAttention(adapter, block, adapter.head_dim))
    assert ModelAdapter(model).roles == adapter.roles  # linears still found by role
    torch.testing.assert_close(logits(model), dense, rtol=1e-4, atol=1e-4)


def test_blocks_take_the_cache_under_the_keyword_they_declare(any_arch):
    """transformers 5.24 renamed the block's cache keyword; a cache passed under a name the
    block does not declare would vanish into **kwargs and the step would attend to itself."""
    import inspect

    adapter = ModelAdapter(tiny_model(any_arch))
    keyword = adapter.cache_keyword
    assert keyword in inspect.signature(type(adapter.blocks[0]).forward).parameters
    assert keyword in inspect.signature(type(adapter.attention(adapter.blocks[0])).forward).parameters


def test_slim_attention_reads_the_cache_under_either_name():
    from harness.throughput import StaticKVCache

    adapter = ModelAdapter(tiny_model("llama3"))
    attention = SlimValueAttention(adapter, adapter.blocks[0], adapter.head_dim // 2)
    # v_proj as wide as the slim value heads, so the module runs with v_dim = head_dim / 2
    attention.v_proj = torch.nn.Linear(64, adapter.num_kv_heads * adapter.head_dim // 2, bias=False)
    attention.o_proj = torch.nn.Linear(adapter.num_heads * adapter.head_dim // 2, 64, bias=False)
    x = torch.randn(1, 3, 64)
    for name in ("cache", "past_key_values"):
        cache = StaticKVCache(5)
        cache.positions = torch.arange(3)
        attention(x, **{name: cache})
        assert cache.values[0].shape[-1] == adapter.head_dim // 2
        assert cache.keys[0][:, :, :3].abs().sum() > 0 and cache.keys[0][:, :, 3:].abs().sum() == 0
