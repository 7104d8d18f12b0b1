"""ShortGPT: remove the blocks that change their input least.

Paper: "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect" (Men et
al., 2024). Block Influence of block i, with x_{i,t} the residual stream entering it at token t
and x_{i+1,t} the stream leaving it:

    BI_i = 1 − E_t [ x_{i,t}ᵀ x_{i+1,t} / (‖x_{i,t}‖ ‖x_{i+1,t}‖) ]

computed once on the dense model; the N blocks of lowest BI are removed at once.

Paper: the formula, one-shot removal, N chosen by the parameter budget. Code: no official
repository; compared with icip-cas/ShortGPT and sramshetty/ShortGPT, which sum 1 − cos over
tokens (the same ranking as the mean). Both HF versions read the last block's output after the
final norm (``output_hidden_states``); we take every block's output on the residual stream,
before the final norm, as the formula reads and sramshetty's first version does. Ours: the
calibration set is the harness's shared one (the paper draws PG19 text); a token whose input
or output is the zero vector is left out of the mean (the references count it as 0.5).
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from harness.method import CompressionReport

from .blocks import DepthPruning


@torch.no_grad()
def block_influence(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """1 − the mean cosine similarity of each token's hidden state before and after a block."""
    total, count = 0.0, 0
    for x, y in zip(inputs, outputs):
        x, y = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        valid = (x.norm(dim=-1) > 0) & (y.norm(dim=-1) > 0)
        total += float(F.cosine_similarity(x[valid], y[valid], dim=-1).sum())
        count += int(valid.sum())
    return 1.0 - total / count


class ShortGPT(DepthPruning):
    name = "shortgpt"
    description = "removes the blocks whose output is most like their input, ranked once (Men et al. 2024)"

    def compress(self, model, calibration, target):
        n = self.block_count(model, target)
        start = time.perf_counter()
        influence = []
        for step in calibration.sequential(model, desc="shortgpt"):
            outputs = step.forward()
            influence.append(block_influence(step.inputs, outputs))
            step.next_inputs = outputs
        removed = sorted(sorted(range(len(influence)), key=influence.__getitem__)[:n])
        model.remove_blocks(removed)
        report = CompressionReport(knobs={"blocks": n}, layer_ratios=self.allocation(len(influence), removed),
                                   timings={"score_s": time.perf_counter() - start})
        report.notes.append(f"removed blocks {removed}; block influence: "
                            + ", ".join(f"{i}:{bi:.4f}" for i, bi in enumerate(influence)))
        return report
