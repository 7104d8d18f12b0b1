"""The modules a SliceGPT model is made of: a scale-free RMS norm and a shortcut block."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.adapters import ModelAdapter
from harness.models.export import exportable


@exportable
class ShortcutRMSNorm(nn.Module):
    """x / rms(x), where rms divides by the *original* width.

    Its scale (and, for LayerNorm models, bias) has been folded into the linears that read
    it, and mean subtraction into the linears that write the residual stream, so the model
    is invariant to orthogonal rotations of the stream. Dividing by the original width keeps
    the norm of a rotated-then-sliced vector comparable with the full one.
    """

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width, self.eps = width, eps

    def export_spec(self) -> dict:
        return {"width": self.width, "eps": self.eps}

    @classmethod
    def rebuild(cls, adapter: ModelAdapter, path: str, spec: dict) -> ShortcutRMSNorm:
        return cls(spec["width"], spec["eps"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        variance = x32.pow(2).sum(-1, keepdim=True) / self.width
        return (x32 * torch.rsqrt(variance + self.eps)).to(x.dtype)


@exportable
class ShortcutBlock(nn.Module):
    """A decoder block whose residual connections carry SliceGPT's shortcut matrices.

    Sequential block (Llama, Phi-3):   h' = h S_attn + attn(norm(h));  out = h' S_mlp + mlp(norm(h'))
    Parallel block (Phi-2):            out = h S_attn + attn(norm(h)) + mlp(norm(h))

    S_attn maps the block's input basis (width d_in) to the mid basis (d_mid), S_mlp the
    mid basis to the output basis (d_out). They are real parameters and count in r.
    The attention and MLP are the model's own modules, with rotated, smaller linears.
    """

    def __init__(self, adapter: ModelAdapter, block: nn.Module, width: int, eps: float):
        super().__init__()
        arch = adapter.arch
        self.parallel = arch.parallel_block
        # The model's own modules, under the names the adapter's row gives them, so the
        # adapter finds the linears and norms of this block as in any other.
        self.names = {"attention": arch.attention, "mlp": arch.mlp, "attention_norm": arch.attention_norm,
                      "mlp_norm": arch.mlp_norm}
        setattr(self, arch.attention, adapter.attention(block))
        setattr(self, arch.mlp, adapter.mlp(block))
        setattr(self, arch.attention_norm, ShortcutRMSNorm(width, eps))
        self.width, self.eps = width, eps
        eye = torch.eye(width, dtype=next(block.parameters()).dtype)
        self.attn_shortcut = nn.Parameter(eye.clone(), requires_grad=False)
        if not self.parallel:
            setattr(self, arch.mlp_norm, ShortcutRMSNorm(width, eps))
            self.mlp_shortcut = nn.Parameter(eye.clone(), requires_grad=False)
        if hasattr(block, "attention_type"):
            self.attention_type = block.attention_type

    def export_spec(self) -> dict:  # the shortcut shapes come from the weights file
        return {"width": self.width, "eps": self.eps}

    @classmethod
    def rebuild(cls, adapter: ModelAdapter, path: str, spec: dict) -> ShortcutBlock:
        return cls(adapter, adapter.model.get_submodule(path), spec["width"], spec["eps"])

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        kwargs.pop("output_attentions", None)
        attention, mlp = getattr(self, self.names["attention"]), getattr(self, self.names["mlp"])
        normed = getattr(self, self.names["attention_norm"])(hidden_states)
        attn = attention(hidden_states=normed, **kwargs)[0]
        if self.parallel:
            return hidden_states @ self.attn_shortcut + attn + mlp(normed)
        hidden = hidden_states @ self.attn_shortcut + attn
        return hidden @ self.mlp_shortcut + mlp(getattr(self, self.names["mlp_norm"])(hidden))
