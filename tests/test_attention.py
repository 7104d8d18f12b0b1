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
        block.self_attn = SlimValueAttention(block.self_attn, adapter.num_heads, adapter.num_kv_heads,
                                             adapter.head_dim, adapter.head_dim)
    assert ModelAdapter(model).roles == adapter.roles  # linears still found by role
    torch.testing.assert_close(logits(model), dense, rtol=1e-4, atol=1e-4)
