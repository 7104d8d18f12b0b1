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
reference's, every column's grid looked up before its block's sweep (the grids are the ones the
reference fits as the sweep reaches them: they read columns the block's sweep does not change);
on a GPU each full block's sweep is replayed as one captured CUDA graph (``cuda_graph``: the same
kernels on the same values, so the same codes; a column's dozen small kernels are launched from
Python once per shape instead of once per column). ``keep_zeros``: weights that are zero before quantizing stay zero (their error is
still pushed on), the joint prune-and-quantize of SparseGPT's paper for a mask fixed first;
a chain after a pruning stage turns it on (``harness.run.chain``).
"""

from __future__ import annotations

import time

import torch

from harness.method import CompressionReport, Knob, QuantizationMethod
from harness.obs import hessian_inverse_factor
from harness.quantization import Grid, minmax_grid, quantized_linear


def sweep_columns(W1: torch.Tensor, S1: torch.Tensor, Z1: torch.Tensor, U1: torch.Tensor, keep1: torch.Tensor | None,
                  C1: torch.Tensor, Err1: torch.Tensor, T: torch.Tensor, maxq: int) -> None:
    """One block's column-by-column sweep, in place: each column of ``W1`` rounded on its grid
    (``S1``, ``Z1``: every column's scale and zero point) into the codes ``C1``, its error scaled
    by U_ii into ``Err1`` and pushed onto the block's later columns. Fixed kernels per column, no
    branch on data, so a CUDA graph can replay it (``T``: one column of scratch)."""
    for i in range(W1.shape[1]):
        w, q = W1[:, i], C1[:, i]
        torch.div(w, S1[:, i], out=q)
        q.round_().add_(Z1[:, i]).clamp_(0, maxq)
        if keep1 is not None:  # a pruned weight's code is the zero point: exactly 0
            q.copy_(torch.where(keep1[:, i], q, Z1[:, i]))
        torch.sub(q, Z1[:, i], out=T).mul_(S1[:, i])  # the dequantised column, scale · (q − zero)
        torch.sub(w, T, out=T)
        err = torch.div(T, U1[i, i], out=Err1[:, i])
        W1[:, i:].addr_(err, U1[i, i:], alpha=-1)  # W[:, j] −= err · U[i, j], j ≥ i


class GraphedSweep:
    """``sweep_columns`` over full blocks of one shape, captured once as a CUDA graph and
    replayed per block: the same kernels on the same values (bit-equal), without a launch from
    Python for each of a column's kernels."""

    def __init__(self, rows: int, width: int, U_dtype: torch.dtype, keep: bool, maxq: int, device: torch.device):
        self.width = width
        shape = (rows, width)
        self.W1, self.S1, self.Z1 = (torch.zeros(shape, device=device) for _ in range(3))
        self.U1 = torch.zeros(width, width, dtype=U_dtype, device=device)
        self.keep1 = torch.ones(shape, dtype=torch.bool, device=device) if keep else None
        self.C1, self.Err1 = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
        self.T = torch.zeros(rows, device=device)
        self.S1.fill_(1.0)
        self.U1.fill_diagonal_(1.0)
        args = (self.W1, self.S1, self.Z1, self.U1, self.keep1, self.C1, self.Err1, self.T, maxq)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs want
            sweep_columns(*args)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            sweep_columns(*args)

    def __call__(self, W1, S1, Z1, U1, keep1) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, Err1) of the block; ``W1`` is updated in place as ``sweep_columns`` would."""
        self.W1.copy_(W1)
        self.S1.copy_(S1)
        self.Z1.copy_(Z1)
        self.U1.copy_(U1)
        if keep1 is not None:
            self.keep1.copy_(keep1)
        self.graph.replay()
        W1.copy_(self.W1)
        return self.C1.clone(), self.Err1.clone()


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, gram: torch.Tensor, tokens: int, grid: Grid, blocksize: int = 128,
                  damp: float = 0.01, act_order: bool = False, static_groups: bool = False,
                  keep_zeros: bool = False, graphs: dict | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes, scales, zeros, g_idx) of ``weight`` quantized by GPTQ; g_idx (column → group) only
    where act-order formed the groups in another order. ``weight`` is left untouched.
    ``graphs``: on a GPU, full blocks replay a captured sweep (``GraphedSweep``), kept in this
    dict by shape for the next linear of that shape (None: every block swept from Python)."""
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
    # each column's group in sweep order (static groups keep the original column's)
    column_group = (order if static is not None and order is not None else torch.arange(cols, device=W.device)) // group
    group_of = column_group.tolist()  # read on the host, without a device sync per column
    codes = torch.empty_like(W)
    scales, zeros = [], []
    graphed = None
    if graphs is not None and W.is_cuda and cols >= blocksize:
        key = (rows, blocksize, U.dtype, keep is not None, grid.maxq, W.device)
        graphed = graphs.get(key) or graphs.setdefault(key, GraphedSweep(*key))
    S1, Z1, T = torch.empty(rows, blocksize, device=W.device), torch.empty(rows, blocksize, device=W.device), torch.empty(rows, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        width = i2 - i1
        # every column's grid, before the block's sweep: a group starting inside the block is
        # fitted on the columns as the earlier blocks' lazy updates left them (not this block's)
        i = 0
        while i < width:  # one run of columns sharing a grid at a time
            column = i1 + i
            run = 1
            while i + run < width and group_of[column + run] == group_of[column]:
                run += 1
            if static is not None:
                scale, zero = static[group_of[column]]
            elif column % group == 0:
                scale, zero = minmax_grid(W[:, column:column + group], grid)
                scales.append(scale)
                zeros.append(zero)
            else:  # a group begun in an earlier block
                scale, zero = scales[-1], zeros[-1]
            S1[:, i:i + run] = scale[:, None]
            Z1[:, i:i + run] = zero[:, None]
            i += run
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        keep1 = keep[:, i1:i2] if keep is not None else None
        if graphed is not None and width == blocksize:
            codes[:, i1:i2], Err1 = graphed(W1, S1, Z1, U1, keep1)
        else:
            Err1 = torch.empty_like(W1)
            sweep_columns(W1, S1[:, :width], Z1[:, :width], U1, keep1, codes[:, i1:i2], Err1, T, grid.maxq)
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
             "keep_zeros": Knob(bool, False, "weights zero before quantizing stay zero (after a pruning stage)"),
             "cuda_graph": Knob(bool, True, "on a GPU, replay each block of columns as one CUDA graph (same kernels, same codes)")}
    variant_knobs = ("act_order", "static_groups", "true_sequential", "damp")

    def compress(self, model, calibration, target):
        grid = self.grid(target)
        options = {name: self.option(target, name) for name in self.knobs}
        report = CompressionReport(knobs=options)
        stats_s = quantize_s = 0.0
        graphs = {}  # captured sweeps by shape, shared by every linear of that shape
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
                        options["act_order"], options["static_groups"], options["keep_zeros"],
                        graphs if options["cuda_graph"] else None)
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
