"""FLAP: heads and MLP channels whose inputs fluctuate least are removed across the whole model,
their mean contribution kept as a bias.

Paper: "Fluctuation-based Adaptive Structured Pruning for Large Language Models" (An et al.,
AAAI 2024). Reference code: CASIA-IVA-Lab/FLAP (``lib/prune.py``: ``prune_flap``, ``compress``;
``lib/layerwrapper.py``: ``BiasGPT``).

For o_proj and down_proj (W: out × in) and each input channel j, over the calibration tokens,

    WIFV_j = Var(x_j) · ‖W[:, j]‖₂²

Within each block and module the scores are standardised, (s − mean) / std; a head's score is
the mean of its head_dim channels'. All heads and channels of all blocks are then ranked
together and the lowest removed until the blocks have lost the target share of their
parameters, each unit weighed by the parameters it holds (the reference's "AL-AM" structure).
A removed input's mean contribution is kept: o_proj / down_proj get the bias
W[:, removed] · mean(x[removed]).

From the reference: the statistics all come from the dense model (one pass, then the pruning);
the attention channel scores are squared before standardising (its code, not its paper);
``std`` unbiased; the metric options ``WIFV`` (default), ``IFV`` (Var(x_j) alone) and ``WIFN``
(mean_i |W_ij| · ‖x_j‖). Ours: the variance is the sample variance over every calibration
token (the reference's running estimate gives the first sequence no weight and each later one a
weight that grows with its position, centred on the running mean: it ranks a few percent of the
channels differently); a unit weighs its nonzero parameters exactly (the
reference weighs a head 170 MLP channels, its int truncation of 4·128/3); a block keeps at least
one query head and one MLP channel (the reference fails on a block left without heads); the
compensating bias adds to a bias the linear already has; grouped-query attention (the
reference has none) as in Wanda-sp (``wanda_sp.py``); the calibration set is the harness's
shared one (the reference: 1024 WikiText-2 windows of 128 tokens).
"""

from __future__ import annotations

import time

import torch

from harness.method import CompressionReport, Knob
from harness.targets import count_parameters

from .units import BlockUnits, WidthPruning, output_moments, remove_units

METRICS = ("WIFV", "IFV", "WIFN")


def channel_scores(metric: str, weight: torch.Tensor, moments) -> torch.Tensor:
    """One score per input channel of ``weight`` (float64)."""
    w = weight.double()
    if metric == "IFV":
        return moments.variance.clone()
    if metric == "WIFV":
        return moments.variance * (w * w).sum(0)
    return (w.abs() * (moments.sqnorm / moments.tokens).sqrt()[None, :]).mean(0)  # WIFN


def standardized(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std()


class FLAP(WidthPruning):
    name = "flap"
    description = "fluctuation of o/down inputs, heads and channels ranked model-wide, bias compensation (An et al. 2024)"
    knobs = {"metric": Knob(str, "WIFV", "WIFV (variance × squared column norm), IFV (variance) or WIFN"),
             "compensate": Knob(bool, True, "add each removed input's mean contribution as a bias")}
    variant_knobs = ("metric", "compensate")

    def compress(self, model, calibration, target):
        metric, compensate = self.option(target, "metric"), self.option(target, "compensate")
        if metric not in METRICS:
            raise ValueError(f"flap: metric must be one of {', '.join(METRICS)}, got {metric!r}")
        start = time.perf_counter()
        units, candidates, means = [], [], []
        for step in calibration.sequential(model, desc="flap statistics"):  # the dense model throughout
            block_units = BlockUnits(model, step.module)
            moments = output_moments(step)
            linears = step.linears
            heads = standardized(channel_scores(metric, linears["o"].weight, moments["o"]) ** 2)
            heads = heads.reshape(block_units.heads, -1).mean(1)
            channels = standardized(channel_scores(metric, linears["down"].weight, moments["down"]))
            candidates += [(float(s), step.index, "head", h) for h, s in enumerate(heads.tolist())]
            candidates += [(float(s), step.index, "channel", c) for c, s in enumerate(channels.tolist())]
            units.append(block_units)
            means.append({role: moments[role].mean.cpu() for role in ("o", "down")} if compensate else None)
        chosen = self.select(candidates, units, target.ratio * count_parameters(model).blocks, compensate)
        statistics_s = time.perf_counter() - start
        start = time.perf_counter()
        report = CompressionReport(knobs={"metric": metric, "compensate": compensate, "structure": "AL-AM"})
        for index, block in enumerate(model.blocks):
            heads, channels = chosen[index]
            remove_units(model, block, sorted(heads), sorted(channels), means[index])
            report.layer_ratios[f"layers.{index}.heads"] = len(heads) / units[index].heads
            report.layer_ratios[f"layers.{index}.mlp"] = len(channels) / units[index].channels
        report.timings = {"statistics_s": statistics_s, "prune_s": time.perf_counter() - start}
        return report

    @staticmethod
    def select(candidates, units: list[BlockUnits], need: float, compensate: bool) -> list[tuple[set, set]]:
        """Units in increasing score, each taken if it brings the net removed parameters (a new
        compensating bias counts against them) nearer to ``need``; a block's last head and last
        channel stay. Up to the budget this is the reference's threshold on the ranked scores;
        at its edge a unit too large to fit is passed over for cheaper ones after it (ours: the
        ratio must land within ±0.005, and one head can hold more than that on a small model)."""
        chosen = [(set(), set()) for _ in units]
        removed = 0
        for _, index, kind, unit in sorted(candidates, key=lambda c: c[0]):
            block, (heads, channels) = units[index], chosen[index]
            taken, limit = (heads, block.heads) if kind == "head" else (channels, block.channels)
            if len(taken) + 1 >= limit:
                continue
            if kind == "head":
                group = unit // block.per
                last = all(g in heads for g in range(group * block.per, (group + 1) * block.per) if g != unit)
                delta = int(block.head_costs[unit]) + (int(block.group_costs[group]) if last else 0)
            else:
                delta = int(block.channel_costs[unit])
            delta -= block.bias_costs[kind] if compensate and not taken else 0
            if abs(removed + delta - need) >= abs(removed - need):
                continue  # past the budget's edge: a cheaper unit further on may still fit
            taken.add(unit)
            removed += delta
        return chosen
