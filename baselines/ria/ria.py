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
by a constant, which changes no ranking). Not here: the reference's channel permutation for
N:M (``--reallocation``, ``--lsa``), which picks the mask in a permuted column order; a weight
so pruned is N:M only in that order, so serving it needs its inputs permuted at run time.
"""

from __future__ import annotations

import time

import torch

from harness.method import CompressionReport, Knob, Method
from harness.sparsity import prune_mask


def ria_scores(weight: torch.Tensor, input_sqnorm: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """(|W| / column sums of |W| + |W| / row sums of |W|) · ‖X_j‖^a, in float32."""
    w = weight.abs().float()
    relative = w / w.sum(0, keepdim=True).clamp_min(1e-12) + w / w.sum(1, keepdim=True).clamp_min(1e-12)
    return relative * input_sqnorm.sqrt().float().pow(a)[None, :]


class RIA(Method):
    name = "ria"
    kind = "unstructured"
    patterns = ("unstructured", "2:4", "4:8")
    description = "relative importance (row and column) times activation norm, no weight update (Zhang et al. 2024)"
    knobs = {"a": Knob(float, 0.5, "exponent of the input norm"),
             "per_row": Knob(bool, False, "unstructured: compare within each output row, not the whole layer")}

    def compress(self, model, calibration, target):
        a, per_row = float(self.option(target, "a")), self.option(target, "per_row")
        report = CompressionReport(knobs={"a": a, "comparison_group": "output row" if per_row else "layer"})
        start = time.perf_counter()
        for block in calibration.sequential(model, desc="ria"):
            stats = block.input_stats(gram=False)
            for role, linear in block.linears.items():
                scores = ria_scores(linear.weight, stats[role].sqnorm, a)
                mask = prune_mask(scores, target.mask_sparsity(linear), target.n_m, per_row=per_row)
                linear.weight.data[mask] = 0
                report.layer_ratios[f"layers.{block.index}.{role}"] = mask.float().mean().item()
        report.timings = {"prune_s": time.perf_counter() - start}
        return report
