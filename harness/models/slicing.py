"""Structural surgery shared by the width-pruning methods: linears cut to kept rows and columns,
attention over kept heads (``SlicedAttention``), MLPs over kept channels."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.adapters import ModelAdapter
from harness.models.attention import SlicedAttention, pair_dimensions


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    """A frozen nn.Linear holding ``weight`` (and ``bias``), on ``like``'s device and dtype."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=like.weight.device, dtype=like.weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    new.requires_grad_(False)
    return new


def qkv_parts(model: ModelAdapter, block: nn.Module):
    """(W, b) of q, k, v (split out of a fused qkv) in float64."""
    linears = model.linears(block)
    if "qkv" in linears:
        lin = linears["qkv"]
        rows = model.fused_rows("qkv", lin)
        return {r: (lin.weight[rows[r]].double(), None if lin.bias is None else lin.bias[rows[r]].double())
                for r in ("q", "k", "v")}
    return {r: (linears[r].weight.double(), None if linears[r].bias is None else linears[r].bias.double())
            for r in ("q", "k", "v")}


@torch.no_grad()
def slice_attention(model: ModelAdapter, block: nn.Module, deleted: list[int], pairs: dict[int, torch.Tensor] | None,
                    bases: dict[int, torch.Tensor], w_o: torch.Tensor) -> None:
    """Replace the block's attention by a ``SlicedAttention`` with these heads, pairs, bases
    and refit output weight ``w_o`` (out × kept heads · v width)."""
    H, G, hd = model.num_heads, model.num_kv_heads, model.head_dim
    per = H // G
    groups = sorted(bases)
    heads = [h for h in range(H) if h not in deleted and h // per in bases]
    dims = {g: (torch.arange(hd) if pairs is None else pair_dimensions(pairs[g].cpu(), hd)) for g in groups}
    parts = qkv_parts(model, block)

    def rows(role, index_of, units):
        W, b = parts[role]
        idx = torch.cat([u * hd + dims[index_of(u)].to(W.device) for u in units]) if units else \
            torch.zeros(0, dtype=torch.long, device=W.device)
        return W[idx], None if b is None else b[idx]

    q = rows("q", lambda h: h // per, heads)
    k = rows("k", lambda g: g, groups)
    W_v, b_v = parts["v"]
    v_w = [bases[g].to(W_v).T @ W_v[g * hd:(g + 1) * hd] for g in groups]
    v_b = None if b_v is None else [bases[g].to(b_v).T @ b_v[g * hd:(g + 1) * hd] for g in groups]
    width = next(iter(bases.values())).shape[1] if bases else 0
    empty = W_v.new_zeros(0, W_v.shape[1])
    v = (torch.cat(v_w) if v_w else empty, None if v_b is None else (torch.cat(v_b) if v_b else b_v[:0]))
    linears = model.linears(block)
    if "qkv" in linears:
        old = linears["qkv"]
        weight = torch.cat([q[0], k[0], v[0]])
        bias = None if old.bias is None else torch.cat([q[1], k[1], v[1]])
        model.replace_linear(block, "qkv", linear_from(weight, bias, old))
    else:
        for role, (W, b) in zip(("q", "k", "v"), (q, k, v)):
            model.replace_linear(block, role, linear_from(W, b, linears[role]))
    o = linears["o"]
    model.replace_linear(block, "o", linear_from(w_o, o.bias, o))
    kv_of_head = [groups.index(h // per) for h in heads]
    kept_pairs = None  # (kept groups × pairs) frequency indices, or None: every pair
    if pairs is not None:
        kept_pairs = torch.stack([pairs[g].cpu() for g in groups]) if groups else torch.zeros(0, 0, dtype=torch.long)
    model.replace_attention(block, SlicedAttention(model, block, heads=heads, groups=groups, kv_of_head=kv_of_head,
                                                   pairs=kept_pairs, v_dim=width))


def slice_mlp(model: ModelAdapter, block: nn.Module, kept: torch.Tensor, new_down: torch.Tensor) -> None:
    """gate/up keep the rows of ``kept`` neurons; down_proj becomes ``new_down`` (d × |kept|)."""
    linears = model.linears(block)
    for role in model.arch.mlp_inputs:
        lin = linears[role]
        rows = kept
        if role in model.arch.fused:  # gate_up: the same neurons of every stacked part
            rows = torch.cat([kept + part.start for part in model.fused_rows(role, lin).values()])
        model.replace_linear(block, role, linear_from(lin.weight[rows], None if lin.bias is None else lin.bias[rows], lin))
    down = linears["down"]
    model.replace_linear(block, "down", linear_from(new_down, down.bias, down))
