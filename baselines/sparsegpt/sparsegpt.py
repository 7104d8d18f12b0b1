"""SparseGPT: prune and reconstruct each layer with approximate second-order updates.

Paper: "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(Frantar & Alistarh, ICML 2023). Reference code: IST-DASLab/sparsegpt (``fasterprune``).

For a linear layer with calibration inputs X (n tokens × d), the layer-wise objective
‖X Wᵀ − X Ŵᵀ‖² has Hessian H = 2 XᵀX / n. With H⁻¹ = Uᵀ U (U upper-triangular, the
Cholesky factor of the inverse), columns are processed left to right; pruning column i's
masked entries costs w²/U_ii² and the optimal update of the remaining columns is

    err = (w_i − q_i) / U_ii          W[:, j] −= err · U[i, j]    for j > i

Following the reference exactly:
- dampening: H += 0.01 · mean(diag H) · I; dead inputs (diag H = 0) get H_jj = 1 and their
  weights are zeroed;
- columns in blocks of 128; the update inside a block is applied column by column, the
  block's accumulated error is propagated to all later columns with one matmul ("lazy
  batch" updates);
- unstructured: the mask of a block is chosen once, when the block starts, as the lowest
  ``sparsity`` fraction of w²/U_jj² over the whole block (adaptive mask selection);
- N:M: at every M-th column, the M − N lowest w²/U_jj² of each row's next M columns;
- statistics of block l come from inputs produced by the already-pruned blocks < l, all
  linears of a block from one pass over the dense block (the reference's default).
We accumulate XᵀX in float64 (the reference: float32) and invert it in float64; the
column sweep runs in float32 as the reference's does. One small difference: the reference
masks ``score <= sorted[k]``, i.e. k + 1 weights per 128-column block (more on ties); we
mask exactly the k lowest, so an unstructured mask keeps one weight per block the reference
prunes (N:M masks are chosen per group of M and do not differ).
"""

from __future__ import annotations

import time

import torch

from harness.method import CompressionReport, Knob, Method
from harness.obs import hessian_inverse_factor


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, gram: torch.Tensor, tokens: int, sparsity: float,
                    n_m: tuple[int, int] | None = None, blocksize: int = 128,
                    damp: float = 0.01) -> torch.Tensor:
    """The pruned (and reconstructed) weight; ``weight`` is left untouched."""
    W = weight.float().clone()
    U, dead = hessian_inverse_factor(gram, tokens, damp)
    W[:, dead] = 0
    rows, cols = W.shape
    if n_m:
        keep, m = n_m
        drop = m - keep
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        if n_m is None:
            score = W1**2 / d[None, :] ** 2
            k = int(score.numel() * sparsity)
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
            if k:
                thresh = torch.kthvalue(score.flatten(), k).values  # k-th smallest
                mask1 = score <= thresh
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        scale = mask1 / d[None, :]  # err = (w − q)/U_ii = w·[pruned]/U_ii
        for i in range(i2 - i1):
            if n_m and i % m == 0:
                score = W1[:, i : i + m] ** 2 / d[None, i : i + m] ** 2
                mask1.scatter_(1, i + torch.topk(score, drop, dim=1, largest=False).indices, True)
                scale[:, i : i + m] = mask1[:, i : i + m] / d[None, i : i + m]
            err = torch.mul(W1[:, i], scale[:, i], out=Err1[:, i])
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1)  # W[:, j] −= err · U[i, j], j ≥ i
        W1[mask1] = 0  # exactly zero, not merely updated to ~0
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W.to(weight.dtype)


class SparseGPT(Method):
    name = "sparsegpt"
    kind = "unstructured"
    patterns = ("unstructured", "2:4", "4:8")
    description = "OBS pruning with weight reconstruction (Frantar & Alistarh 2023)"
    knobs = {"blocksize": Knob(int, 128, "columns pruned and updated together (the reference's 128)"),
             "damp": Knob(float, 0.01, "dampening added to H's diagonal, as a fraction of its mean")}

    def compress(self, model, calibration, target):
        blocksize, damp = self.option(target, "blocksize"), float(self.option(target, "damp"))
        report = CompressionReport(knobs={"blocksize": blocksize, "damp": damp})
        stats_s = prune_s = 0.0
        for block in calibration.sequential(model, desc="sparsegpt"):
            start = time.perf_counter()
            stats = block.input_stats()
            stats_s += time.perf_counter() - start
            start = time.perf_counter()
            for role, linear in block.linears.items():
                s = stats[role]
                linear.weight.data = sparsegpt_prune(linear.weight.data, s.gram, s.tokens,
                                                     target.mask_sparsity(linear), target.n_m, blocksize, damp)
                report.layer_ratios[f"layers.{block.index}.{role}"] = (linear.weight == 0).float().mean().item()
            prune_s += time.perf_counter() - start
        report.timings = {"statistics_s": stats_s, "prune_s": prune_s}
        return report
