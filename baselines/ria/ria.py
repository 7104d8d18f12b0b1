"""RIA: prune by each weight's importance relative to its row and its column, times its input's norm.

Paper: "Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models"
(Zhang et al., ICLR 2024). Reference code: biomedical-cybernetics/Relative-importance-and-
activation-pruning (``lib/prune.py``: ``prune_ria``).

For a linear y = x Wᵀ (W: out × in) with calibration inputs X,

    RIA_ij = ( |W_ij| / Σ_k |W_kj|  +  |W_ij| / Σ_k |W_ik| ) · ‖X_j‖₂ ^ a

the first sum over the weight's column (every output reading input j), the second over its row.
Unstructured: the lowest-scoring fraction of the whole layer is removed (the reference's default
comparison group; ``per_row`` compares within each output row, as Wanda does). N:M: within each
group of M consecutive inputs of a row, the N highest are kept. No weight update; blocks in
sequence, each scored on the outputs of the blocks pruned before it (as the reference).

From the reference: a = 0.5; the norm is Wanda's (its sqrt of the mean x² differs from ‖X_j‖₂
by a constant, which changes no ranking); for N:M, ``permute`` picks the mask in a permuted
column order, its channel reallocation then linear sum assignment (``--reallocation --lsa``,
without ``--fast``'s blocks; ``permutation.py``). A weight so pruned is N:M in that order only:
the order is kept on the linear (``nm_input_order``, which the pattern check reads), and serving
it on N:M kernels needs its inputs permuted at run time, which the harness's 2:4 kernels do not
do (its speed rows run dense kernels and say so).
"""

from __future__ import annotations

import time

import torch

from harness.method import CompressionReport, Knob, Method
from harness.sparsity import prune_mask

from .permutation import kept_score, mask_in_order, permuted_order


def ria_scores(weight: torch.Tensor, input_sqnorm: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """(|W| / column sums of |W| + |W| / row sums of |W|) · ‖X_j‖^a, in float32."""
    w = weight.detach().abs().float()
    relative = w / w.sum(0, keepdim=True).clamp_min(1e-12) + w / w.sum(1, keepdim=True).clamp_min(1e-12)
    return relative * input_sqnorm.sqrt().float().pow(a)[None, :]


class RIA(Method):
    name = "ria"
    kind = "unstructured"
    patterns = ("unstructured", "2:4", "4:8")
    description = "relative importance (row and column) times activation norm, no weight update (Zhang et al. 2024)"
    requires = {"scipy.optimize": "scipy"}
    knobs = {"a": Knob(float, 0.5, "exponent of the input norm"),
             "per_row": Knob(bool, False, "unstructured: compare within each output row, not the whole layer"),
             "permute": Knob(bool, False, "N:M: choose the mask in a permuted column order (channel "
                                          "reallocation, then linear sum assignment; needs scipy)")}
    variant_knobs = ("a", "per_row", "permute")

    def compress(self, model, calibration, target):
        a, per_row, permute = float(self.option(target, "a")), self.option(target, "per_row"), self.option(target, "permute")
        if permute and not target.n_m:
            raise ValueError("ria.permute chooses an N:M mask's column order: give an N:M --pattern (2:4, 4:8)")
        report = CompressionReport(knobs={"a": a, "comparison_group": "output row" if per_row else "layer",
                                          "permute": permute})
        start = time.perf_counter()
        gains = []
        for block in calibration.sequential(model, desc="ria"):
            stats = block.input_stats(gram=False)
            for role, linear in block.linears.items():
                scores = ria_scores(linear.weight, stats[role].sqnorm, a)
                if permute:
                    n, m = target.n_m
                    order = permuted_order(scores, n, m)
                    mask = mask_in_order(scores, order, n, m)
                    linear.register_buffer("nm_input_order", order, persistent=False)
                    plain = torch.arange(scores.shape[1], device=scores.device)
                    gains.append(kept_score(scores, order, n, m) / kept_score(scores, plain, n, m))
                else:
                    mask = prune_mask(scores, target.mask_sparsity(linear), target.n_m, per_row=per_row)
                linear.weight.data[mask] = 0
                report.layer_ratios[f"layers.{block.index}.{role}"] = mask.float().mean().item()
        report.timings = {"prune_s": time.perf_counter() - start}
        if gains:
            report.notes.append(f"kept score in the permuted order over the weight's own order: mean {sum(gains) / len(gains):.4f}, "
                                f"min {min(gains):.4f} over {len(gains)} linears")
        return report
