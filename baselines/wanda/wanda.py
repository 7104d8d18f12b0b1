"""Wanda: prune the weights with the smallest |W_ij| · ‖X_j‖₂, row by row.

Paper: "A Simple and Effective Pruning Approach for Large Language Models" (Sun, Liu,
Bair, Kolter, 2023). Reference code: locuslab/wanda (``prune_wanda``).

For a linear layer y = x Wᵀ with calibration inputs X (tokens × in_features):

    score_ij = |W_ij| · ‖X_j‖₂        ‖X_j‖₂ over every calibration token

Unstructured: in each output row i (the paper's per-output comparison group) remove the
``sparsity`` fraction of weights with the lowest score. N:M: in each group of M
consecutive inputs of a row keep the N highest. No weight update.

Sequential protocol, as the reference: the statistics of block l are collected on
inputs produced by the already-pruned blocks 0..l−1, for all of the block's linears in one
forward pass of the dense block; the pruned block's outputs then feed block l+1.
Details left open by the paper and taken from the reference: the norm is accumulated over
all tokens of all calibration samples; ties are broken by the sort (we use top-k, which
may break exact ties differently); the reference's optional "variant" (an adaptive
per-layer threshold search) is off by default there and not implemented here.
"""

from __future__ import annotations

import time

import torch

from harness.method import CompressionReport, Method
from harness.sparsity import prune_mask


def wanda_scores(weight: torch.Tensor, input_sqnorm: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂, in float32 (the weight may be fp16 on a GPU)."""
    return weight.abs().float() * input_sqnorm.sqrt().float()[None, :]


class Wanda(Method):
    name = "wanda"
    kind = "unstructured"
    patterns = ("unstructured", "2:4", "4:8")
    description = "|W|·‖X‖ per-row pruning, no weight update (Sun et al. 2023)"

    def compress(self, model, calibration, target):
        report = CompressionReport(knobs={"comparison_group": "output row"})
        stats_s = prune_s = 0.0
        for block in calibration.sequential(model, desc="wanda"):
            start = time.perf_counter()
            stats = block.input_stats(gram=False)  # column norms are all Wanda needs
            stats_s += time.perf_counter() - start
            start = time.perf_counter()
            for role, linear in block.linears.items():
                mask = prune_mask(wanda_scores(linear.weight, stats[role].sqnorm),
                                  target.mask_sparsity(linear), target.n_m)
                linear.weight.data[mask] = 0
                report.layer_ratios[f"layers.{block.index}.{role}"] = mask.float().mean().item()
            prune_s += time.perf_counter() - start
        report.timings = {"statistics_s": stats_s, "prune_s": prune_s}
        return report
