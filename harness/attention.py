"""Attention whose value heads are narrower than its query/key heads.

Structured methods that compress the value→output path (IntraSlice folds a per-KV-group
PCA basis into the value and output projections) leave each value head with v_dim < head_dim dimensions,
which transformers' attention modules cannot express. ``SlimValueAttention`` takes over
the original module's projections, rotary and scaling and computes

    softmax(q kᵀ · scaling + mask) v        q, k: head_dim;  v: v_dim per head

with one ``scaled_dot_product_attention`` call (it accepts a value width different from
the query/key width, and shares KV heads across query groups natively), so no Python
reshaping runs per head. With a KV cache (transformers' caches or
``harness.throughput.StaticKVCache``) the cached values are v_dim wide: the cache for V
shrinks by v_dim / head_dim as well.

The module relies only on what a decoder block passes its attention: hidden states,
``position_embeddings`` (cos, sin), ``attention_mask`` and the cache. transformers 5.24
renamed the cache keyword from ``past_key_values`` to ``cache`` (the old name is a
deprecated alias until 5.40); both are accepted here by name, so neither version's block
can hand the cache over under a name this module ignores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.adapters import ModelAdapter


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the first cos.shape[-1] dimensions (all of them, or Phi-2's partial rotary)."""
    rot = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, L, rot): broadcast over heads
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x_rot = x_rot * cos + _rotate_half(x_rot) * sin
    return torch.cat((x_rot, x_pass), dim=-1) if x_pass.shape[-1] else x_rot


class SlimValueAttention(nn.Module):
    """Multi-head / grouped-query attention with value heads of width ``v_dim``.

    Built from a block's attention module through its adapter, which says where the
    projections are: they keep their attribute names here (so the adapter still finds the
    linears by role), and so do the q/k norms where the model has them.
    """

    def __init__(self, adapter: ModelAdapter, block: nn.Module, v_dim: int):
        super().__init__()
        original = adapter.attention(block)
        self.num_heads, self.num_kv_heads = adapter.num_heads, adapter.num_kv_heads
        self.head_dim, self.v_dim = adapter.head_dim, v_dim
        self.scaling = float(getattr(original, "scaling", self.head_dim**-0.5))
        self.layer_idx = getattr(original, "layer_idx", None)
        self.names = adapter.attention_projections(block)  # role -> attribute name
        for name in self.names.values():
            setattr(self, name, getattr(original, name))
        self.fused_qkv = "qkv" in self.names
        norms = adapter.qk_norms(block)
        self.qk_norm_names = adapter.arch.qk_norms if norms else ()
        for name, norm in zip(self.qk_norm_names, norms or ()):
            setattr(self, name, norm)

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                cache=None, past_key_values=None, **kwargs) -> tuple[torch.Tensor, None]:
        B, L, _ = hidden_states.shape
        H, G, hd, vd = self.num_heads, self.num_kv_heads, self.head_dim, self.v_dim
        projection = {role: getattr(self, name) for role, name in self.names.items()}
        if self.fused_qkv:
            q, k, v = projection["qkv"](hidden_states).split([H * hd, G * hd, G * vd], dim=-1)
        else:
            q, k, v = (projection[r](hidden_states) for r in ("q", "k", "v"))
        q = q.view(B, L, H, hd).transpose(1, 2)
        k = k.view(B, L, G, hd).transpose(1, 2)
        v = v.view(B, L, G, vd).transpose(1, 2)
        if self.qk_norm_names:
            q_norm, k_norm = (getattr(self, name) for name in self.qk_norm_names)
            q, k = q_norm(q), k_norm(k)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        cache = cache if cache is not None else past_key_values
        if cache is not None:  # values are cached v_dim wide
            k, v = cache.update(k, v, self.layer_idx)
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask[:, :, :, : k.shape[-2]]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling,
                                                 enable_gqa=G != H)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=L > 1, scale=self.scaling,
                                                 enable_gqa=G != H)
        out = out.transpose(1, 2).reshape(B, L, H * vd)
        return projection["o"](out), None
