"""The inverse-Hessian factor of the layer-wise reconstruction problem, shared by the methods
that update weights column by column with it (SparseGPT, GPTQ; Frantar et al.).

For a linear layer with calibration inputs X (n tokens × d), ‖X Wᵀ − X Ŵᵀ‖² has Hessian
H = 2 XᵀX / n. Both reference implementations damp it and keep the upper Cholesky factor U of
its inverse, H⁻¹ = UᵀU, whose rows drive the column sweep:

    H += damp · mean(diag H) · I        dead inputs (diag H = 0): H_jj = 1, their weights zeroed

The scale of H (per token here, per sequence in the references) cancels: the damping is
relative and the sweep uses ratios of U's entries.
"""

from __future__ import annotations

import torch


def hessian_inverse_factor(gram: torch.Tensor, tokens: int, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): U upper-triangular with H⁻¹ = UᵀU for H = 2·gram/n + damping, float32;
    ``dead``: the inputs that never fire. ``gram`` (float64 XᵀX) is left untouched."""
    H = gram * (2.0 / tokens)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    return torch.linalg.cholesky(Hinv, upper=True).float(), dead
