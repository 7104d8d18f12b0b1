"""Wanda-sp: Wanda's score summed over structures, the same share of heads and channels per layer.

The structured Wanda baseline of FLAP's paper (An et al., AAAI 2024), reference code
CASIA-IVA-Lab/FLAP (``lib/prune.py``: ``prune_wanda_sp``). For o_proj and down_proj, with
‖X_j‖₂ the norm of input channel j over the calibration tokens,

    column score_j = mean_i |W_ij| · ‖X_j‖₂        head score = Σ of its head_dim columns

and in each block the int(p·H) lowest-scoring query heads and the lowest-scoring MLP channels
are removed, with no weight update and no bias compensation; blocks in sequence, each scored
on the outputs of the blocks pruned before it (as the reference).

From the reference: the scores, int(p·H) heads per layer. Ours: the MLP channel count is set so
that each block loses the target share of its nonzero parameters (the reference removes int(p·I)
channels and int(p·H) heads, which misses the ratio by up to a head's share); grouped-query
attention (the reference has none): a removed query head takes its q rows and o columns, and
its KV head's k and v rows go when the group's last query head does.
"""

from __future__ import annotations

import time

import torch

from harness.method import CompressionReport

from .units import BlockUnits, WidthPruning, output_moments, remove_units


def column_scores(weight: torch.Tensor, sqnorm: torch.Tensor) -> torch.Tensor:
    """mean over output rows of |W_ij| · ‖X_j‖₂."""
    return (weight.abs().double() * sqnorm.sqrt()[None, :].to(weight.device)).mean(0)


class WandaSP(WidthPruning):
    name = "wanda-sp"
    description = "Wanda's score per head and MLP channel, a uniform share per layer (FLAP's baseline)"

    def compress(self, model, calibration, target):
        report = CompressionReport(knobs={"heads_per_layer": "int(p·H)"})
        start = time.perf_counter()
        for step in calibration.sequential(model, desc="wanda-sp"):
            units = BlockUnits(model, step.module)
            moments = output_moments(step)
            linears = step.linears
            heads_score = column_scores(linears["o"].weight, moments["o"].sqnorm).reshape(units.heads, -1).sum(1)
            channel_score = column_scores(linears["down"].weight, moments["down"].sqnorm)
            heads = set(torch.argsort(heads_score, stable=True)[:int(target.ratio * units.heads)].tolist())
            channels = units.channels_for(target.ratio, heads, torch.argsort(channel_score, stable=True).tolist())
            remove_units(model, step.module, sorted(heads), channels)
            report.layer_ratios[f"layers.{step.index}.heads"] = len(heads) / units.heads
            report.layer_ratios[f"layers.{step.index}.mlp"] = len(channels) / units.channels
        report.timings = {"prune_s": time.perf_counter() - start}
        return report
