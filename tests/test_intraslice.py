"""IntraSlice as its authors built it: sliced attention equals masked dense attention, zero
added parameters, keeping everything is exact, the cache path equals the full forward, and
the block-wise Fisher gradients equal whole-model autograd."""

import pytest
import torch
from conftest import logits_of as logits
from conftest import synthetic_calibration as calibration
from conftest import tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.targets import count_parameters, measure_ratio
from methods.intraslice import allocation
from methods.intraslice import intraslice as algo
from methods.intraslice.intraslice import IntraSlice

SLICED = ["llama2", "llama3", "smollm2", "mistral", "qwen2", "phi3"]  # Q/K pairs sliceable


def linear_parameters(adapter) -> int:
    return sum(lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
               for _, lin in adapter.named_linears())


def masked_dense_attention(adapter, block, hidden, position_embeddings, deleted, dims, bases):
    """The authors' simulation: dense q/k zeroed outside the kept dims after RoPE, deleted
    heads zeroed, each head projected on its group's basis, dense o_proj."""
    H, G, hd = adapter.num_heads, adapter.num_kv_heads, adapter.head_dim
    per = H // G
    q, k, v = algo._qkv(adapter, block, hidden, position_embeddings)
    keep = torch.zeros(G, hd)
    for g, d in dims.items():
        keep[g, d] = 1
    q, k = q * keep.repeat_interleave(per, 0)[None, :, None], k * keep[None, :, None]
    a = algo._attend(q, k.repeat_interleave(per, 1), v.repeat_interleave(per, 1), None)
    out = torch.zeros_like(a)
    for h in range(H):
        if h not in deleted and h // per in bases:
            U = bases[h // per].float()
            out[:, h] = a[:, h] @ U @ U.T
    B, _, L, _ = a.shape
    return adapter.linears(block)["o"](out.transpose(1, 2).reshape(B, L, H * hd))


@pytest.mark.parametrize("arch", SLICED)
def test_sliced_attention_equals_masked_dense_attention(arch):
    """Dropping RoPE pairs before rotation = zeroing them after (RoPE commutes with the
    pair selection); deleted heads and uneven KV groups included."""
    torch.manual_seed(0)
    adapter = ModelAdapter(tiny_model(arch))
    H, G, hd = adapter.num_heads, adapter.num_kv_heads, adapter.head_dim
    per = H // G
    block = adapter.blocks[0]
    hidden = torch.randn(2, 11, adapter.hidden_size)
    positions = torch.arange(11).expand(2, 11)
    position_embeddings = adapter.position_embeddings(hidden, positions, "full_attention")
    deleted = [1]
    w = hd // 2
    pairs = {g: torch.randperm(hd // 2)[: w // 2].sort().values for g in range(G)}
    bases = {g: torch.linalg.qr(torch.randn(hd, hd, dtype=torch.float64))[0][:, :w] for g in range(G)}
    dims = {g: algo.pair_dimensions(p, hd) for g, p in pairs.items()}
    with torch.no_grad():
        expected = masked_dense_attention(adapter, block, hidden, position_embeddings, deleted, dims, bases)
        heads = [h for h in range(H) if h not in deleted]
        P = torch.zeros(H * hd, len(heads) * w, dtype=torch.float64)
        for i, h in enumerate(heads):
            P[h * hd:(h + 1) * hd, i * w:(i + 1) * w] = bases[h // per]
        algo.slice_attention(adapter, block, deleted, pairs, bases, adapter.linears(block)["o"].weight.double() @ P)
        got, _ = adapter.attention(block)(hidden, position_embeddings=position_embeddings)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    attention = adapter.attention(block)
    assert (attention.num_heads, attention.qk_dim, attention.v_dim) == (H - 1, w, w)
    assert not attention.even_groups  # group 0 lost a head: KV shared by index


@pytest.mark.parametrize("arch", SLICED)
def test_keeping_everything_reproduces_dense_logits(arch, monkeypatch):
    """Ratio 0 through every step (head choice, pairs, PCA rotation of V, o_proj refit):
    without the authors' 1 % damping the refit is exact, so the logits are the dense ones."""
    monkeypatch.setattr(algo, "DAMP", 0.0)
    model = tiny_model(arch)
    dense = logits(model)
    adapter = ModelAdapter(model)
    for step in calibration(n=16).sequential(adapter):
        kept = algo.prune_attention(step, adapter, 0.0)
        assert kept["heads"] == list(range(adapter.num_heads)) and kept["v_dim"] == adapter.head_dim
    torch.testing.assert_close(logits(model), dense, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arch", SLICED)
def test_no_added_parameters_and_measured_ratio(arch):
    model = tiny_model(arch)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    report = IntraSlice().compress(adapter, calibration(), Target(0.3))
    # every parameter of every block is in one of its (smaller) linears: nothing added
    assert count_parameters(adapter).blocks == linear_parameters(adapter)
    for i, block in enumerate(adapter.blocks):
        kept, attention = report.knobs["kept"][f"layers.{i}"], adapter.attention(block)
        assert adapter.linears(block)["o"].in_features == len(kept["heads"]) * kept["v_dim"]
        assert attention.qk_dim == kept["qk_dim"] and kept["qk_dim"] % 2 == 0
        assert adapter.linears(block)["down"].in_features == kept["mlp"]
    # one MLP step (8 neurons) is the resolution of the match on these tiny blocks
    step = 8 * 3 * adapter.hidden_size * len(adapter.blocks) / dense.blocks
    assert abs(measure_ratio(dense, adapter).ratio - 0.3) <= step
    assert torch.isfinite(logits(model)).all()


def test_decode_over_the_cache_equals_the_full_forward():
    from transformers import DynamicCache

    torch.manual_seed(0)
    model = tiny_model("llama3")
    adapter = ModelAdapter(model)
    IntraSlice().compress(adapter, calibration(), Target(0.4))
    H, hd = adapter.num_heads, adapter.head_dim
    assert any(a.num_heads < H or a.qk_dim < hd for a in map(adapter.attention, adapter.blocks))
    ids = torch.randint(0, 320, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache()
        out = model(ids[:, :7], past_key_values=cache, use_cache=True)
        steps = [out.logits]
        for t in range(7, 12):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_uneven_groups_decode_over_the_cache():
    """A deleted head leaves its KV group with fewer query heads: the cache path still matches."""
    from transformers import DynamicCache

    torch.manual_seed(1)
    model = tiny_model("llama3")
    adapter = ModelAdapter(model)
    G, hd = adapter.num_kv_heads, adapter.head_dim
    for block in adapter.blocks:
        pairs = {g: torch.arange(hd // 4) for g in range(G)}
        bases = {g: torch.eye(hd, dtype=torch.float64)[:, : hd // 2] for g in range(G)}
        heads = [0, 2, 3]
        cols = torch.cat([h * hd + torch.arange(hd // 2) for h in heads])
        algo.slice_attention(adapter, block, [1], pairs, bases, adapter.linears(block)["o"].weight.double()[:, cols])
    ids = torch.randint(0, 320, (1, 9))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], past_key_values=DynamicCache(), use_cache=True)
        steps = [out.logits]
        for t in range(5, 9):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_blockwise_mask_gradients_equal_whole_model_autograd():
    model = tiny_model("llama3")
    adapter = ModelAdapter(model)
    cal = calibration(n=16, length=24)
    heads, neurons = allocation.mask_gradients(adapter, cal)
    assert heads.shape[0] == 2  # 16 windows in groups of 8
    # the same gradients, straight: masks as hooks, summed per-window losses, one backward
    masks, handles = [], []
    for block in adapter.blocks:
        lin = adapter.linears(block)
        pair = (torch.ones(lin["o"].in_features, requires_grad=True),
                torch.ones(lin["down"].in_features, requires_grad=True))
        masks.append(pair)
        for linear, mask in zip((lin["o"], lin["down"]), pair):
            handles.append(linear.register_forward_pre_hook(lambda m, a, mask=mask: (a[0] * mask,)))
    ids = cal.input_ids[:8]
    loss = sum(torch.nn.functional.cross_entropy(model(ids[s:s + 1]).logits[0, :-1], ids[s, 1:]) for s in range(8))
    loss.backward()
    for h in handles:
        h.remove()
    torch.testing.assert_close(heads[0], torch.stack([m[0].grad for m in masks]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(neurons[0], torch.stack([m[1].grad for m in masks]), rtol=1e-4, atol=1e-6)


def test_recorrect_caps_and_keeps_the_total():
    ratios = torch.tensor([0.95, 0.9, 0.3, 0.2, 0.0])
    fixed = allocation.recorrect(ratios)
    assert float(fixed.max()) <= 0.8 + 1e-6
    assert float(fixed.sum()) == pytest.approx(float(ratios.sum()), abs=1e-5)
    assert float(fixed[-1]) == 0.0  # an unpruned layer stays unpruned


def test_global_ratios_spend_the_authors_budget():
    adapter = ModelAdapter(tiny_model("llama3"))
    L, H, F = len(adapter.blocks), adapter.num_heads, adapter.linears(adapter.blocks[0])["down"].in_features
    torch.manual_seed(0)
    ratios = allocation.global_ratios(adapter, torch.rand(L, H), torch.rand(L, F), 0.4)
    mlp_kept = float(((1 - ratios[:, 1]) * F).sum())
    assert mlp_kept == pytest.approx(int(L * F * 0.6), abs=1)  # bias 1: the MLPs keep 1 − s
    heads_kept = float(((1 - ratios[:, 0]) * H).sum())
    cost = allocation.head_cost(adapter)
    budget = 0.6 * L * (cost * H + 3 * adapter.hidden_size * F)
    assert heads_kept == int((budget - int(L * F * 0.6) * 3 * adapter.hidden_size) / cost)


def test_choose_heads_deletes_a_dead_head_and_keeps_widths_even():
    torch.manual_seed(0)
    H, hd = 4, 16
    x = torch.randn(4096, H * hd, dtype=torch.float64)
    x[:, hd:2 * hd] *= 1e-3  # head 1 barely contributes
    gram = x.T @ x
    w_o = torch.randn(32, H * hd)
    deleted, width = algo.choose_heads(gram, w_o, 0.3, H, hd)
    assert deleted == [1] and width % 2 == 0 and width <= hd
    assert width == int(round((H * hd - round(H * hd * 0.3)) / 3 / 2) * 2)


def test_native_sparsity_reproduces_the_authors_ratios():
    adapter = ModelAdapter(tiny_model("llama2"))
    report = IntraSlice(name="u", allocation="uniform").compress(
        adapter, calibration(), Target(0.3, options={"sparsity": 0.25}))
    assert report.knobs["sparsity"] == 0.25
    width = 128
    assert all(k["mlp"] == algo.mlp_keep(width, 0.25) for k in report.knobs["kept"].values())


@pytest.mark.parametrize("name", ["intraslice-vo", "intraslice-mlp", "intraslice-noqk", "intraslice-uniform"])
def test_ablations_touch_only_their_parts(name):
    from harness.plugins import default_registry

    adapter = ModelAdapter(tiny_model("llama3"))
    dense_widths = adapter.linears(adapter.blocks[0])["down"].in_features
    ratio = 0.1 if name == "intraslice-vo" else 0.3
    report = default_registry().method(name).compress(adapter, calibration(), Target(ratio))
    for i, block in enumerate(adapter.blocks):
        kept = report.knobs["kept"][f"layers.{i}"]
        if name == "intraslice-vo":
            assert kept["mlp"] == dense_widths
        if name == "intraslice-mlp":
            assert "heads" not in kept and not hasattr(adapter.attention(block), "qk_dim")
        if name == "intraslice-noqk":
            assert adapter.attention(block).qk_dim == adapter.head_dim


def test_refuses_what_it_cannot_slice():
    from harness.models.adapters import architecture_for

    assert "partial" not in (IntraSlice().unsupported(architecture_for("llama")) or "")
    assert "rotates only part" in IntraSlice().unsupported(architecture_for("phi"))
    assert IntraSlice(name="x", slice_qk=False).unsupported(architecture_for("phi")) is None
    assert "soft-capping" in IntraSlice().unsupported(architecture_for("gemma2"))
