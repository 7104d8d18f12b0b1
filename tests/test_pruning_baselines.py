"""Wanda and SparseGPT: properties a look-alike would fail."""

import pytest
import torch
from conftest import synthetic_calibration, tiny_model

from baselines.sparsegpt.sparsegpt import SparseGPT, sparsegpt_prune
from baselines.wanda.wanda import Wanda
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.sparsity import prune_mask
from harness.targets import count_parameters, measure_ratio


def calibration(n=4, length=32, seed=0):
    return synthetic_calibration(n, length, seed, batch_size=2)


def block_inputs(model, ids):
    """Every linear's input in every block, captured from an ordinary forward pass."""
    adapter = ModelAdapter(model)
    xs, handles = {}, []
    for i, block in enumerate(adapter.blocks):
        for role, lin in adapter.linears(block).items():
            def hook(m, a, o, key=(i, role)):
                xs.setdefault(key, []).append(a[0].reshape(-1, a[0].shape[-1]).double())
            handles.append(lin.register_forward_hook(hook))
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in xs.items()}


@pytest.mark.parametrize("method", [Wanda(), SparseGPT()])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_exact_sparsity_on_every_architecture(method, pattern, any_arch):
    model = tiny_model(any_arch)
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    target = Target(0.5, pattern)
    sparsity = {name: target.mask_sparsity(lin) for name, lin in adapter.named_linears()}
    method.compress(adapter, calibration(), target)
    for name, lin in adapter.named_linears():
        zero = lin.weight == 0
        if pattern == "unstructured":
            if method.name == "wanda":  # every row at the (bias-corrected) weight sparsity
                k = int(lin.in_features * sparsity[name])
                assert bool((zero.sum(1) == k).all()), name
            else:  # every layer at the target
                assert zero.float().mean().item() == pytest.approx(sparsity[name], abs=2e-3)
        else:
            n, m = target.n_m
            kept = (~zero).reshape(lin.out_features, -1, m).sum(-1)
            assert bool((kept == n).all()), name  # exactly N nonzeros in every group of M
    if pattern == "unstructured":  # per-row counts are whole: 1/64 granularity on tiny rows
        assert abs(measure_ratio(dense, adapter).ratio - 0.5) <= 0.005 + 1 / 64


def test_wanda_equals_explicit_topk_of_the_score_with_sequential_inputs():
    calib = calibration()
    dense = tiny_model("llama3")
    pruned = tiny_model("llama3")
    Wanda().compress(ModelAdapter(pruned), calib, Target(0.4))
    blocks = len(ModelAdapter(dense).blocks)
    for i in range(blocks):
        # block i's statistics: blocks < i already pruned, block i still dense (one pass)
        hybrid = tiny_model("llama3")
        for j in range(i):
            ModelAdapter(hybrid).blocks[j].load_state_dict(ModelAdapter(pruned).blocks[j].state_dict())
        inputs = block_inputs(hybrid, calib.input_ids)
        for role, lin in ModelAdapter(pruned).linears(ModelAdapter(pruned).blocks[i]).items():
            w = ModelAdapter(dense).linears(ModelAdapter(dense).blocks[i])[role].weight.detach()
            score = w.abs().double() * inputs[(i, role)].norm(dim=0)[None, :]
            k = int(lin.in_features * 0.4)
            expected = torch.zeros_like(score, dtype=torch.bool)
            expected.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], True)
            assert torch.equal(lin.weight == 0, expected), (i, role)
            assert torch.equal(lin.weight[~expected], w[~expected])  # no weight update
    # the sequential protocol matters: block 1 scored on dense inputs gets another mask
    dense_inputs = block_inputs(dense, calib.input_ids)
    w = ModelAdapter(dense).linears(ModelAdapter(dense).blocks[1])["down"].weight
    dense_mask = prune_mask(w.abs() * dense_inputs[(1, "down")].norm(dim=0)[None].float(), 0.4)
    assert not torch.equal(dense_mask, ModelAdapter(pruned).linears(ModelAdapter(pruned).blocks[1])["down"].weight == 0)


def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude():
    torch.manual_seed(0)
    d_in, d_out, n = 256, 128, 4096
    # real-ish activations: correlated features with a few outlier channels
    mix = torch.randn(d_in, d_in) / d_in**0.5
    X = torch.randn(n, d_in) @ mix
    X[:, :8] *= 20
    W = torch.randn(d_out, d_in) / d_in**0.5
    gram = X.double().T @ X.double()

    def error(W_hat):
        return ((X @ W.T - X @ W_hat.T).norm() / (X @ W.T).norm()).item()

    for pattern, sparsity in [(None, 0.5), ((2, 4), 0.5), (None, 0.7)]:
        ours = sparsegpt_prune(W, gram, n, sparsity, pattern)
        wanda = W.masked_fill(prune_mask(W.abs() * X.norm(dim=0)[None], sparsity, pattern), 0)
        magnitude = W.masked_fill(prune_mask(W.abs(), sparsity, pattern, per_row=False), 0)
        assert (ours == 0).float().mean().item() == pytest.approx(sparsity, abs=1e-3)
        assert error(ours) < 0.9 * min(error(wanda), error(magnitude)), pattern
        assert error(wanda) <= error(magnitude), pattern


def test_sparsegpt_zeroes_dead_inputs_and_keeps_input_untouched():
    W = torch.randn(16, 64)
    X = torch.randn(512, 64)
    X[:, 3] = 0
    before = W.clone()
    out = sparsegpt_prune(W, X.double().T @ X.double(), 512, 0.25)
    assert torch.equal(W, before)
    assert bool((out[:, 3] == 0).all())
