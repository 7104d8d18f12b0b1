import pytest
import torch
from conftest import tiny_model

from harness.models.adapters import ModelAdapter, UnsupportedArchitecture

EXPECTED_ROLES = {
    "llama": ("q", "k", "v", "o", "gate", "up", "down"),
    "phi3": ("qkv", "o", "gate_up", "down"),
    "phi2": ("q", "k", "v", "o", "up", "down"),
    "gemma": ("q", "k", "v", "o", "gate", "up", "down"),
}


def test_adapter_exposes_every_part(any_arch):
    model = tiny_model(any_arch)
    adapter = ModelAdapter(model)
    assert adapter.roles == EXPECTED_ROLES[adapter.family]
    assert len(adapter.blocks) == model.config.num_hidden_layers
    for block in adapter.blocks:
        linears = adapter.linears(block)
        assert all(isinstance(m, torch.nn.Linear) for m in linears.values())
        assert linears["o"].out_features == adapter.hidden_size
        assert linears["down"].out_features == adapter.hidden_size
        assert adapter.norms(block)
        # which norm feeds which sublayer: the adapter's knowledge, not a position in a list
        assert adapter.attention_norm(block) in adapter.norm_modules(block)
        assert adapter.mlp_norm(block) in adapter.norm_modules(block)
    assert adapter.lm_head.out_features == model.config.vocab_size
    assert adapter.tied_embeddings == (any_arch in ("smollm2", "gemma2", "gemma3"))
    assert adapter.rotary is not None
    names = [n for n, _ in adapter.named_linears()]
    assert len(names) == len(set(names)) == len(adapter.roles) * len(adapter.blocks)


def test_replace_linear_swaps_the_module(any_arch):
    adapter = ModelAdapter(tiny_model(any_arch))
    block = adapter.blocks[0]
    old = adapter.linears(block)["down"]
    new = torch.nn.Linear(old.in_features // 2, old.out_features, bias=old.bias is not None)
    adapter.replace_linear(block, "down", new)
    assert adapter.linears(block)["down"] is new


def test_untie_embeddings_keeps_values():
    adapter = ModelAdapter(tiny_model("smollm2"))
    assert adapter.tied_embeddings
    adapter.untie_embeddings()
    assert not adapter.tied_embeddings
    assert torch.equal(adapter.lm_head.weight, adapter.embeddings.weight)


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitecture, match="gpt2.*supported model types: llama"):
        ModelAdapter(model)
