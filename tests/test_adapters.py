import pytest
import torch
from conftest import logits_of, tiny_model

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


def _skipping(model, skipped: set[int]):
    """Forward hooks that make the blocks in ``skipped`` return their input unchanged."""
    handles = []
    for i, block in enumerate(ModelAdapter(model).blocks):
        if i in skipped:
            def identity(module, args, kwargs, output):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            handles.append(block.register_forward_hook(identity, with_kwargs=True))
    return handles


def test_removing_blocks_equals_skipping_them(any_arch):
    model = tiny_model(any_arch, layers=4)
    depth = len(ModelAdapter(model).blocks)
    handles = _skipping(model, {1})
    skipped = logits_of(model)
    for h in handles:
        h.remove()
    adapter = ModelAdapter(model)
    adapter.remove_blocks([1])
    assert len(adapter.blocks) == model.config.num_hidden_layers == depth - 1
    torch.testing.assert_close(logits_of(model), skipped)
    types = getattr(model.config, "layer_types", None)
    if types:  # each remaining block keeps its own attention type
        assert len(types) == depth - 1 and all(getattr(b.self_attn, "layer_idx", i) == i for i, b in enumerate(adapter.blocks))


def test_a_depth_pruned_model_decodes_with_its_cache_and_loads_in_plain_transformers(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    model = tiny_model(arch, layers=4)
    adapter = ModelAdapter(model)
    adapter.remove_blocks([0, 2])
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        prefix = model(ids[:, :8], use_cache=True)
        step = model(ids[:, 8:], past_key_values=prefix.past_key_values, use_cache=True).logits
    torch.testing.assert_close(step, full[:, 8:], rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    assert loaded.config.num_hidden_layers == len(adapter.blocks)
    torch.testing.assert_close(logits_of(loaded), logits_of(model))


def test_removing_every_block_or_a_missing_one_is_refused():
    adapter = ModelAdapter(tiny_model("llama3"))
    depth = len(adapter.blocks)
    with pytest.raises(ValueError, match="cannot remove all"):
        adapter.remove_blocks(range(depth))
    with pytest.raises(IndexError):
        adapter.remove_blocks([depth])
