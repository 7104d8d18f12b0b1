"""OWL: each block pruned to its own sparsity, lower where it holds more outlier weights.

Paper: "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to
High Sparsity" (Yin et al., ICML 2024). Reference code: luuyin/OWL (``lib/prune_all.py``:
``prune_wanda_outlier``, ``prune_sparsegpt_outlier``, ``check_outlier_mean``).

Block l's outlier ratio D_l is the fraction of the Wanda scores |W_ij|·‖X_j‖ of all its linears,
pooled, above M times their mean. With D̂ = (D − min D) / (max D − min D) over the blocks and S
the target sparsity,

    s_l = S − 2λ (D̂_l − mean D̂)        (mean s_l = S; more outliers, lower sparsity)

and the base method (Wanda, or SparseGPT with ``base="sparsegpt"``) prunes every linear of
block l to s_l.

From the reference: the scores are taken on the dense model (a first pass in which each dense
block's outputs feed the next), the pruning is a second sequential pass as the base method's
own; a block sparsity at or below 0 becomes 0.01; λ = 0.08 and M = 5, its README's settings
(its argparse default for M is 3). Ours: ‖X_j‖ over all calibration tokens (the reference's
sqrt of the mean x² differs by a constant, which M·mean cancels); each block's sparsity goes
through the harness's nonzero-aware mask sparsity (``harness.sparsity.mask_sparsity``), so r
counts as for every method. Unstructured only: the reference's N:M path
(``prune_wanda_outlier_structure``) changes N from block to block, a pattern no N:M kernel
serves and no N:M table compares.
"""

from __future__ import annotations

import time

import torch

from baselines.sparsegpt.sparsegpt import sparsegpt_prune
from baselines.wanda.wanda import wanda_scores
from harness.method import CompressionReport, Knob, Method
from harness.sparsity import mask_sparsity, prune_mask


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """The fraction of all ``scores`` (pooled) above ``m`` times their mean."""
    pooled = torch.cat([s.flatten() for s in scores])
    return float((pooled > m * pooled.mean()).float().mean())


def layer_sparsities(ratios: list[float], sparsity: float, lamda: float) -> list[float]:
    """s_l = S − 2λ (D̂_l − mean D̂), with D̂ the outlier ratios scaled to [0, 1]; ≤ 0 → 0.01."""
    d = torch.tensor(ratios, dtype=torch.float64)
    span = d.max() - d.min()
    d = (d - d.min()) / span * (2 * lamda) if span > 0 else torch.zeros_like(d)
    density = d - d.mean() + (1 - sparsity)
    return [s if s > 0 else 0.01 for s in (1 - density).tolist()]


class OWL(Method):
    name = "owl"
    kind = "unstructured"
    description = "Wanda/SparseGPT with per-block sparsity from each block's outlier share (Yin et al. 2024)"
    knobs = {"base": Knob(str, "wanda", "the method that prunes each block: wanda or sparsegpt"),
             "hyper_m": Knob(float, 5.0, "a score is an outlier above M times its block's mean score"),
             "lamda": Knob(float, 0.08, "block sparsities range over S ± λ")}
    variant_knobs = ("base", "hyper_m", "lamda")

    def compress(self, model, calibration, target):
        base, m, lamda = self.option(target, "base"), float(self.option(target, "hyper_m")), float(self.option(target, "lamda"))
        if base not in ("wanda", "sparsegpt"):
            raise ValueError(f"owl: base must be wanda or sparsegpt, got {base!r}")
        start = time.perf_counter()
        ratios = []
        for block in calibration.sequential(model, desc="owl outliers"):  # dense: nothing changes here
            stats = block.input_stats(gram=False)
            ratios.append(outlier_ratio([wanda_scores(linear.weight, stats[role].sqnorm)
                                         for role, linear in block.linears.items()], m))
        sparsities = layer_sparsities(ratios, target.ratio, lamda)
        allocation_s = time.perf_counter() - start
        report = CompressionReport(knobs={"base": base, "hyper_m": m, "lamda": lamda})
        start = time.perf_counter()
        for block in calibration.sequential(model, desc=f"owl {base}"):
            stats = block.input_stats(gram=base == "sparsegpt")
            for role, linear in block.linears.items():
                sparsity = mask_sparsity([linear], sparsities[block.index])
                if base == "wanda":
                    linear.weight.data[prune_mask(wanda_scores(linear.weight, stats[role].sqnorm), sparsity)] = 0
                else:
                    s = stats[role]
                    linear.weight.data = sparsegpt_prune(linear.weight.data, s.gram, s.tokens, sparsity)
                report.layer_ratios[f"layers.{block.index}.{role}"] = (linear.weight == 0).float().mean().item()
        report.timings = {"allocation_s": allocation_s, "prune_s": time.perf_counter() - start}
        report.notes.append("outlier ratio and sparsity per block: " + ", ".join(
            f"{i}:{d:.4f}/{s:.4f}" for i, (d, s) in enumerate(zip(ratios, sparsities))))
        return report
