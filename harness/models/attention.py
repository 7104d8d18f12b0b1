"""Attention with sliced shapes: fewer heads, fewer RoPE frequency pairs, narrower values.

transformers' attention modules assume every head is ``head_dim`` wide and every KV group
serves ``H / G`` query heads. Structured methods break both: IntraSlice (the authors' code)
deletes whole query heads, keeps only some RoPE frequency pairs of Q and K (one set per KV
group), and folds a per-group PCA basis into the value and output projections; its
value-only variant narrows just the values. ``SlicedAttention`` computes, per kept query
head h of KV group g(h),

    softmax(rope_g(q_h) · rope_g(k_g)ᵀ · scaling + mask) v_g

where ``rope_g`` rotates only the frequency pairs group g keeps. RoPE rotates dimension j
together with j + head_dim/2 by the angle of frequency j, so dropping a pair (both of its
dimensions, from W_q and W_k) before RoPE equals zeroing it after: the sliced module is the
masked dense one, exactly. ``scaling`` stays the dense 1/√head_dim (the authors mask the
dense q/k, so the softmax temperature is unchanged). Values are ``v_dim`` wide; the KV
cache (transformers' caches or ``harness.serving.step.StaticKVCache``) stores keys
``qk_dim`` wide and values ``v_dim`` wide, so it shrinks with them.

With every head and pair kept (``SlimValueAttention``) the module also serves models whose
rotary is partial (Phi-2) or that normalise q and k per head (those need all dimensions).

The module relies only on what a decoder block passes its attention: hidden states,
``position_embeddings`` (cos, sin), ``attention_mask`` and the cache. transformers 5.24
renamed the cache keyword from ``past_key_values`` to ``cache`` (the old name is a
deprecated alias until 5.40); both are accepted here by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.adapters import ModelAdapter
from harness.models.export import exportable


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first cos.shape[-1] dimensions (all of them, or Phi-2's partial rotary).

    ``cos``/``sin`` are (B, L, rot), shared by every head, or (B, heads, L, rot), per head."""
    rot = cos.shape[-1]
    if cos.dim() == 3:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, L, rot): broadcast over heads
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x_rot = x_rot * cos + _rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot


def pair_dimensions(pairs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Dimensions of the kept frequency pairs, in the order rotate_half expects:
    (G, p) pair indices j → (G, 2p) dimensions [j…, j + head_dim/2 …]."""
    return torch.cat([pairs, pairs + head_dim // 2], dim=-1)


@exportable
class SlicedAttention(nn.Module):
    """Multi-head / grouped-query attention over kept heads, RoPE pairs and value widths.

    ``heads``: original indices of the kept query heads; ``groups``: original indices of
    the kept KV heads; ``kv_of_head``: for each kept query head, the position of its KV
    head in ``groups``; ``pairs``: (len(groups), p) kept RoPE frequency indices per KV head,
    or None for all of them; ``v_dim``: value width. The projections are the block's own
    (already sliced by the caller to these shapes) and keep their attribute names, so the
    adapter still finds the linears by role. Index tensors are integer buffers: nothing
    here is a parameter.
    """

    def __init__(self, adapter: ModelAdapter, block: nn.Module, *, heads: list[int], groups: list[int],
                 kv_of_head: list[int], pairs: torch.Tensor | None, v_dim: int):
        super().__init__()
        original = adapter.attention(block)
        self.head_dim = adapter.head_dim  # the dense width: RoPE tables and scaling refer to it
        self.heads, self.groups = list(heads), list(groups)
        self.num_heads, self.num_kv_heads = len(self.heads), len(self.groups)
        self.qk_dim = self.head_dim if pairs is None else 2 * pairs.shape[-1]
        self.v_dim = v_dim
        self.scaling = float(getattr(original, "scaling", self.head_dim**-0.5))
        self.layer_idx = getattr(original, "layer_idx", None)
        #: Mistral's window: applied here whenever the block hands over no 4-D mask.
        self.sliding_window = adapter.sliding_window
        device = next(original.parameters()).device  # index buffers live where the block is
        self.register_buffer("kv_of_head", torch.tensor(kv_of_head, dtype=torch.long, device=device),
                             persistent=False)
        #: Query heads per KV head, when every kept KV head serves the same number in order
        #: (then SDPA shares KV heads natively); None when deletions made groups uneven.
        per = self.num_heads // max(self.num_kv_heads, 1)
        even = self.num_kv_heads and per * self.num_kv_heads == self.num_heads and \
            list(kv_of_head) == [g for g in range(self.num_kv_heads) for _ in range(per)]
        self.even_groups = bool(even)
        dims = None if pairs is None else pair_dimensions(pairs.long(), self.head_dim).to(device)
        self.register_buffer("rope_dims", dims, persistent=False)
        self.names = adapter.attention_projections(block)  # role -> attribute name
        for name in self.names.values():
            setattr(self, name, getattr(original, name))
        self.fused_qkv = "qkv" in self.names
        norms = adapter.qk_norms(block)
        self.qk_norm_names = adapter.arch.qk_norms if norms else ()
        if norms and pairs is not None:
            raise ValueError("q/k norms normalise over all head dimensions: RoPE pairs cannot be sliced")
        for name, norm in zip(self.qk_norm_names, norms or ()):
            setattr(self, name, norm)

    def export_spec(self) -> dict:
        pairs = None if self.rope_dims is None else self.rope_dims[:, : self.qk_dim // 2].tolist()
        return {"heads": self.heads, "groups": self.groups, "kv_of_head": self.kv_of_head.tolist(),
                "pairs": pairs, "v_dim": self.v_dim}

    @classmethod
    def rebuild(cls, adapter: ModelAdapter, path: str, spec: dict) -> SlicedAttention:
        block = _block_of(adapter, path)
        pairs = None if spec["pairs"] is None else torch.tensor(spec["pairs"], dtype=torch.long).view(
            len(spec["groups"]), -1)
        return SlicedAttention(adapter, block, heads=spec["heads"], groups=spec["groups"],
                               kv_of_head=spec["kv_of_head"], pairs=pairs, v_dim=spec["v_dim"])

    def _rotary_tables(self, cos: torch.Tensor, sin: torch.Tensor):
        """Per-KV-head and per-query-head (cos, sin) of the kept pairs: (B, heads, L, qk_dim)."""
        B, L = cos.shape[:2]
        G, d = self.rope_dims.shape
        flat = self.rope_dims.reshape(-1)
        cos_g = cos[..., flat].view(B, L, G, d).transpose(1, 2)
        sin_g = sin[..., flat].view(B, L, G, d).transpose(1, 2)
        return (cos_g, sin_g), (cos_g[:, self.kv_of_head], sin_g[:, self.kv_of_head])

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                cache=None, past_key_values=None, **kwargs) -> tuple[torch.Tensor, None]:
        B, L, _ = hidden_states.shape
        H, G, dqk, dv = self.num_heads, self.num_kv_heads, self.qk_dim, self.v_dim
        projection = {role: getattr(self, name) for role, name in self.names.items()}
        if H == 0:  # every head deleted: the attention adds only the output bias, if any
            return projection["o"](hidden_states.new_zeros(B, L, 0)), None
        if self.fused_qkv:
            q, k, v = projection["qkv"](hidden_states).split([H * dqk, G * dqk, G * dv], dim=-1)
        else:
            q, k, v = (projection[r](hidden_states) for r in ("q", "k", "v"))
        q = q.view(B, L, H, dqk).transpose(1, 2)
        k = k.view(B, L, G, dqk).transpose(1, 2)
        v = v.view(B, L, G, dv).transpose(1, 2)
        if self.qk_norm_names:
            q_norm, k_norm = (getattr(self, name) for name in self.qk_norm_names)
            q, k = q_norm(q), k_norm(k)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            if self.rope_dims is None:
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            else:
                (cos_k, sin_k), (cos_q, sin_q) = self._rotary_tables(cos, sin)
                q, k = apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos_k, sin_k)
        cache = cache if cache is not None else past_key_values
        if cache is not None:  # keys cached qk_dim wide, values v_dim wide
            k, v = cache.update(k, v, self.layer_idx)
        if not self.even_groups:  # uneven groups after head deletion: one KV copy per query head
            k, v = k.index_select(1, self.kv_of_head), v.index_select(1, self.kv_of_head)
        gqa = self.even_groups and G != H
        S = k.shape[-2]
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask[:, :, :, :S]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling, enable_gqa=gqa)
        elif self.sliding_window and S > self.sliding_window:  # causal and at most `window` back
            i = torch.arange(S - L, S, device=q.device)[:, None]
            j = torch.arange(S, device=q.device)[None, :]
            band = (j <= i) & (i - j < self.sliding_window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=band, scale=self.scaling, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=L > 1, scale=self.scaling, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(B, L, H * dv)
        return projection["o"](out), None


def _block_of(adapter: ModelAdapter, path: str) -> nn.Module:
    """The decoder block whose attention sits at ``path``."""
    attention = adapter.model.get_submodule(path)
    for block in adapter.blocks:
        if adapter.attention(block) is attention:
            return block
    raise ValueError(f"no decoder block holds the attention at {path}")


@exportable
class SlimValueAttention(SlicedAttention):
    """Every head and RoPE pair kept, value heads ``v_dim`` wide (IntraSlice's value-only fold)."""

    def __init__(self, adapter: ModelAdapter, block: nn.Module, v_dim: int):
        H, G = adapter.num_heads, adapter.num_kv_heads
        super().__init__(adapter, block, heads=list(range(H)), groups=list(range(G)),
                         kv_of_head=[h // (H // G) for h in range(H)], pairs=None, v_dim=v_dim)
