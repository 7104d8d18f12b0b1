"""GPTQ: quantize each layer column by column, pushing each column's rounding error onto the
columns not yet quantized.

Paper: "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers"
(Frantar, Ashkboos, Hoefler & Alistarh, ICLR 2023). Reference code: IST-DASLab/gptq
(``gptq.GPTQ.fasterquant``, ``llama.py``'s ``llama_sequential``).

With H = 2 XᵀX / n damped and H⁻¹ = UᵀU (``harness.obs``), column i is rounded to q_i on its
group's grid and the error is spread over the later columns, as SparseGPT spreads a pruned
weight's:

    err = (w_i − q_i) / U_ii          W[:, j] −= err · U[i, j]    for j > i

From the reference, exactly:
- columns in blocks of 128, updates inside a block column by column, the block's accumulated
  error pushed to the later columns with one matmul ("lazy batch" updates);
- damping 1 % of mean(diag H); dead inputs get H_jj = 1 and their weights zeroed;
- the grid (``harness.quantization.minmax_grid``) is fitted per group when the sweep reaches
  the group's first column, on the columns as the lazy updates left them (so a group starting
  inside a block is fitted before that block's own updates reach it, as in the reference);
  one grid per row over the whole weight without groups;
- act-order (``act_order``): columns in decreasing diag(H), groups formed in that order
  (``g_idx`` maps each column to its group); ``static_groups`` (GPTQModel/AutoGPTQ, not the
  reference) fits every group's grid before the sweep on the original column order, so groups
  stay contiguous and kernels that need contiguous groups can serve an act-order model;
- all linears of a block from one pass over the block as the earlier blocks left it (the
  reference's default); ``true_sequential``: q/k/v, then o, then the MLP inputs, then down,
  each from a pass through the block as the earlier groups left it (the reference's flag).
Ours: XᵀX accumulated in float64, factorised in float64; the sweep in float32 as the
reference's. ``keep_zeros``: weights that are zero before quantizing stay zero (their error is
still pushed on), the joint prune-and-quantize of SparseGPT's paper for a mask fixed first;
a chain after a pruning stage turns it on (``harness.run.chain``).
"""

from __future__ import annotations

import time

import torch

from harness.method import CompressionReport, Knob, QuantizationMethod
from harness.obs import hessian_inverse_factor
from harness.quantization import Grid, minmax_grid, quantized_linear


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, gram: torch.Tensor, tokens: int, grid: Grid, blocksize: int = 128,
                  damp: float = 0.01, act_order: bool = False, static_groups: bool = False,
                  keep_zeros: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes, scales, zeros, g_idx) of ``weight`` quantized by GPTQ; g_idx (column → group) only
    where act-order formed the groups in another order. ``weight`` is left untouched."""
    W = weight.float().clone()
    rows, cols = W.shape
    keep = W != 0 if keep_zeros else None
    group = grid.columns(cols)
    order = None
    static = None
    if static_groups:  # every group's grid from the original weight, before any update
        static = [minmax_grid(W[:, g:g + group], grid) for g in range(0, cols, group)]
    if act_order:
        order = torch.argsort(torch.diag(gram), descending=True)
        W, gram = W[:, order], gram[order][:, order]
        keep = keep[:, order] if keep is not None else None
    U, dead = hessian_inverse_factor(gram, tokens, damp)
    W[:, dead] = 0
    codes = torch.zeros_like(W)
    column_group = torch.zeros(cols, dtype=torch.long, device=W.device)
    scales, zeros = [], []
    scale = zero = None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            column = i1 + i
            if static is not None:
                source = int(order[column]) if order is not None else column
                scale, zero = static[source // group]
                column_group[column] = source // group
            else:
                if column % group == 0:  # a new group: its grid from the columns as they are now
                    scale, zero = minmax_grid(W[:, column:column + group], grid)
                    scales.append(scale)
                    zeros.append(zero)
                column_group[column] = len(scales) - 1
            w = W1[:, i]
            q = torch.clamp(torch.round(w / scale) + zero, 0, grid.maxq)
            if keep is not None:  # a pruned weight's code is the zero point: exactly 0
                q = torch.where(keep[:, column], q, zero)
            codes[:, column] = q
            err = torch.div(w - scale * (q - zero), U1[i, i], out=Err1[:, i])
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1)  # W[:, j] −= err · U[i, j], j ≥ i
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    if static is not None:
        scales, zeros = [s for s, _ in static], [z for _, z in static]
    g_idx = None
    if order is not None:
        inverse = torch.argsort(order)
        codes, column_group = codes[:, inverse], column_group[inverse]
        if not static_groups:
            g_idx = column_group.to(torch.int32)
    return codes, torch.stack(scales, 1), torch.stack(zeros, 1), g_idx


class GPTQ(QuantizationMethod):
    name = "gptq"
    description = "second-order error compensation, column by column (Frantar et al. 2023)"
    knobs = {**QuantizationMethod.knobs,
             "act_order": Knob(bool, False, "quantize columns in decreasing Hessian diagonal (the reference's --act-order)"),
             "static_groups": Knob(bool, False, "with act_order: fit every group's grid first, keep groups contiguous"),
             "true_sequential": Knob(bool, False, "statistics of each sub-layer group after the earlier ones are quantized"),
             "blocksize": Knob(int, 128, "columns quantized and updated together (the reference's 128)"),
             "damp": Knob(float, 0.01, "dampening added to H's diagonal, as a fraction of its mean"),
             "keep_zeros": Knob(bool, False, "weights zero before quantizing stay zero (after a pruning stage)")}
    variant_knobs = ("act_order", "static_groups", "true_sequential", "damp")

    def compress(self, model, calibration, target):
        grid = self.grid(target)
        options = {name: self.option(target, name) for name in self.knobs}
        report = CompressionReport(knobs=options)
        stats_s = quantize_s = 0.0
        for block in calibration.sequential(model, desc="gptq"):
            roles = list(block.linears)
            stages = self.sequential_groups(model, roles) if options["true_sequential"] else [roles]
            for stage in stages:
                start = time.perf_counter()
                stats = block.input_stats(stage)
                stats_s += time.perf_counter() - start
                start = time.perf_counter()
                for role in stage:
                    linear = block.linears[role]
                    s = stats[role]
                    codes, scales, zeros, g_idx = gptq_quantize(
                        linear.weight.data, s.gram, s.tokens, grid, options["blocksize"], float(options["damp"]),
                        options["act_order"], options["static_groups"], options["keep_zeros"])
                    nonzeros = int(torch.count_nonzero(linear.weight))
                    model.replace_linear(block.module, role,
                                         quantized_linear(linear, codes, scales, zeros, grid, nonzeros, g_idx))
                quantize_s += time.perf_counter() - start
        report.timings = {"statistics_s": stats_s, "quantize_s": quantize_s}
        return report

    @staticmethod
    def sequential_groups(model, roles: list[str]) -> list[list[str]]:
        """The reference's true-sequential order: attention inputs, the rest of attention, MLP
        inputs, the rest (a role in none of these last)."""
        arch = model.arch
        attention_rest = [r for r in roles if r not in arch.attention_inputs and r not in arch.mlp_roles]
        order = [list(arch.attention_inputs), attention_rest, list(arch.mlp_inputs),
                 [r for r in arch.mlp_roles if r not in arch.mlp_inputs]]
        stages = [[r for r in stage if r in roles] for stage in order]
        placed = {r for stage in stages for r in stage}
        return [stage for stage in stages if stage] + ([[r for r in roles if r not in placed]] if placed != set(roles) else [])
