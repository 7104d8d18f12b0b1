import torch
from conftest import tiny_model

from harness.models.adapters import ModelAdapter
from harness.models.attention import SlimValueAttention


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
    from harness.serving.step import StaticKVCache

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


def test_sliced_attention_keeps_mistrals_sliding_window():
    """Every position, with a window shorter than the sequence, whatever mask the block passes."""
    from conftest import TINY
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(**TINY, num_key_value_heads=2, sliding_window=4)).eval()
    ids = torch.randint(0, 320, (2, 12))
    with torch.no_grad():
        dense = model(ids).logits
    adapter = ModelAdapter(model)
    for block in adapter.blocks:
        adapter.replace_attention(block, SlimValueAttention(adapter, block, adapter.head_dim))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, dense, rtol=1e-4, atol=1e-4)


def test_sliding_window_without_a_mask_is_banded():
    """Handed no 4-D mask, the module builds Mistral's band itself (decode over a long cache)."""
    from conftest import TINY
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(**TINY, num_key_value_heads=2, sliding_window=4)).eval()
    adapter = ModelAdapter(model)
    block = adapter.blocks[0]
    seen = {}
    handle = adapter.attention(block).register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(kwargs, hidden=args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True)
    with torch.no_grad():
        model(torch.randint(0, 320, (1, 12)))
    handle.remove()
    assert seen["attention_mask"] is not None and seen["attention_mask"].dim() == 4
    sliced = SlimValueAttention(adapter, block, adapter.head_dim)
    with torch.no_grad():
        masked, _ = sliced(seen["hidden"], position_embeddings=seen["position_embeddings"],
                           attention_mask=seen["attention_mask"])
        banded, _ = sliced(seen["hidden"], position_embeddings=seen["position_embeddings"])
    torch.testing.assert_close(banded, masked, rtol=1e-5, atol=1e-6)
