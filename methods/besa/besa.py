"""BESA: learn how sparse each row should be, block by block, by reconstructing the block.

Paper: "BESA: Pruning Large Language Models with Blockwise Parameter-Efficient Sparsity
Allocation" (Xu, Shao, Chen, Tang, Zhang, Gao, Luo; ICLR 2024). Reference code:
OpenGVLab/LLMPrune-BESA (``models/sparse_layers.py``, ``main.py``, ``main_exps.sh``).

For every linear of a block, the weights of each row are sorted by Wanda's importance
|W_ij|·‖X_j‖ (least important first). A row does not learn a mask per weight but a
distribution β over D+1 candidate sparsities c = (1, 1 − 1/D, ..., 0) (D = 100, step 0.01),
from a handful of logits: β = softmax(sigmoid(logits)). Its expected sparsity is
s = Σ_d β_d c_d. The mask used in the forward pass is the hard one (prune the int(s·n)
least important weights of the row); its gradient is that of the expected mask, whose
entry at importance rank j is the probability of being kept, 1 − Σ_d β_d [j < int(c_d n)]
(straight-through: M = M_hard − sg(M_exp) + M_exp). The block is trained to minimise

    ‖(F_dense(X) − F_masked(X)) / ‖F_dense(X)‖_col‖² / d  +  λ ((s_block − s*) / s*)²

where the reconstruction is normalised per output feature over the batch's tokens and
s_block is the parameter-weighted mean of the linears' expected sparsities; the weights
themselves never change (gradient flows only into the logits). The reference target
F_dense(X) is the dense block applied to the inputs produced by the already pruned blocks.

Settings from the reference's experiment script (main_exps.sh; the paper's runs): one
epoch over the calibration samples, one sample per step, the Prodigy optimiser
(``prodigyopt``, lr 1, d_coef 5), λ = 5 (``sparsity_beta``), row-wise distributions
(``blocksize 1``), Wanda metric, sigmoid smoothing, fp32 training. Every option is exposed:
``-o besa.epochs=2``, ``besa.lr``, ``besa.d_coef``, ``besa.sparsity_beta``, ``besa.step``
(candidate step), ``besa.rows_per_group`` (1 = per row; 0 = one distribution per layer, the
reference's argparse default).

After training the hard masks are applied. One deviation: the reference keeps whatever
block sparsity the penalty reached (typically a few tenths of a point off); a matched-ratio
comparison needs the target, so every row's learned sparsity is shifted by one common
offset until the block's hard masks meet it (``matching_offset``; the learned and the
applied figures are both recorded in the report).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from baselines.wanda.wanda import wanda_scores
from harness.method import CompressionReport, Knob, Method


class LearnedSparsityLinear(nn.Module):
    """A frozen linear whose rows learn their sparsity (the BESA mask)."""

    def __init__(self, linear: nn.Linear, importance: torch.Tensor, step: float, rows_per_group: int):
        super().__init__()
        self.weight = linear.weight.detach()
        self.bias = None if linear.bias is None else linear.bias.detach()
        rows, cols = self.weight.shape
        order = torch.sort(importance, dim=1, stable=True).indices  # least important first
        self.rank = torch.argsort(order, dim=1)  # rank[r, c]: position of column c in row r's order
        count = round(1 / step) + 1
        self.candidates = torch.linspace(1.0, 0.0, count, device=self.weight.device)
        pruned = (cols * self.candidates).long()  # weights each candidate prunes
        positions = torch.arange(cols, device=self.weight.device)
        self.prunes = (positions[None, :] < pruned[:, None]).float()  # (candidates, cols)
        self.rows_per_group = rows_per_group or rows
        groups = rows // self.rows_per_group
        self.logits = nn.Parameter(torch.zeros(groups, count, device=self.weight.device))

    def row_sparsity(self) -> torch.Tensor:
        beta = self.logits.sigmoid().softmax(-1)
        return (beta @ self.candidates).repeat_interleave(self.rows_per_group)

    def mask(self) -> torch.Tensor:
        beta = self.logits.sigmoid().softmax(-1)
        keep_by_rank = (1 - beta @ self.prunes).repeat_interleave(self.rows_per_group, 0)  # (rows, cols)
        expected = keep_by_rank.gather(1, self.rank)
        prune_count = (self.row_sparsity().detach() * self.weight.shape[1]).long()
        hard = (self.rank >= prune_count[:, None]).to(expected.dtype)
        return hard - expected.detach() + expected

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask().to(self.weight.dtype), self.bias)

    @torch.no_grad()
    def prune_counts(self, offset: float = 0.0) -> torch.Tensor:
        return ((self.row_sparsity() + offset).clamp(0, 1) * self.weight.shape[1]).long()

    @torch.no_grad()
    def hard_mask(self, offset: float = 0.0) -> torch.Tensor:
        """True where a weight is pruned."""
        return self.rank < self.prune_counts(offset)[:, None]


@torch.no_grad()
def matching_offset(layers: dict[str, LearnedSparsityLinear], goal: float) -> float:
    """The common shift of every row's sparsity that makes the block's hard masks hit ``goal``.

    Training drives the *expected* sparsity to the target only up to the penalty's balance
    with the reconstruction loss, and the hard mask floors each row's count. The reference
    stops there; a matched-ratio comparison needs the target, so we shift all rows by one
    offset (found by bisection), which keeps the learned allocation's shape.
    """
    total = sum(layer.weight.numel() for layer in layers.values())
    need = goal * total
    lo, hi = -1.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        pruned = sum(int(layer.prune_counts(mid).sum()) for layer in layers.values())
        lo, hi = (mid, hi) if pruned < need else (lo, mid)
    return hi


def block_sparsity(layers: dict[str, LearnedSparsityLinear]) -> torch.Tensor:
    total = sum(layer.weight.numel() for layer in layers.values())
    return sum(layer.row_sparsity().mean() * layer.weight.numel() for layer in layers.values()) / total


class BESA(Method):
    name = "besa"
    kind = "unstructured"
    patterns = ("unstructured",)
    description = "learned row-wise sparsity allocation by block reconstruction (Xu et al. 2024)"
    requires = {"prodigyopt": "prodigyopt"}
    knobs = {
        "epochs": Knob(int, 1, "passes over the calibration samples per block"),
        "lr": Knob(float, 1.0, "Prodigy learning rate"),
        "d_coef": Knob(float, 5.0, "Prodigy d_coef"),
        "sparsity_beta": Knob(float, 5.0, "λ of the sparsity penalty"),
        "step": Knob(float, 0.01, "candidate sparsity step (D = 1/step candidates)"),
        "rows_per_group": Knob(int, 1, "rows sharing one distribution (0: one per layer)"),
    }

    def compress(self, model, calibration, target):
        epochs, rows_per_group = self.option(target, "epochs"), self.option(target, "rows_per_group")
        lr, d_coef = float(self.option(target, "lr")), float(self.option(target, "d_coef"))
        beta_weight, step_size = float(self.option(target, "sparsity_beta")), float(self.option(target, "step"))
        report = CompressionReport(knobs={"weight_sparsity_target": [], "epochs": epochs, "lr": lr,
                                          "d_coef": d_coef, "sparsity_beta": beta_weight,
                                          "candidate_step": step_size, "rows_per_group": rows_per_group,
                                          "optimizer": "Prodigy"})
        losses, expected, offsets, start = [], [], [], time.perf_counter()
        for block in calibration.sequential(model, desc="besa"):
            goal = target.mask_sparsity(*block.linears.values())  # the block's, zeros it holds counted
            report.knobs["weight_sparsity_target"].append(round(goal, 5))
            stats = block.input_stats(gram=False)
            dense_out = block.forward()  # the reference target: dense block, pruned-stream inputs
            originals = dict(block.linears)
            dtype = next(block.module.parameters()).dtype
            block.module.float()
            learned = {}
            for role, linear in originals.items():
                importance = wanda_scores(linear.weight, stats[role].sqnorm)  # the reference's metric
                learned[role] = LearnedSparsityLinear(linear, importance, step_size, rows_per_group)
                model.replace_linear(block.module, role, learned[role])
            losses.append(self._train(block, learned, dense_out, goal, epochs, lr, d_coef, beta_weight))
            expected.append(float(block_sparsity(learned).detach()))
            offset = matching_offset(learned, goal)
            offsets.append(offset)
            with torch.no_grad():
                for role, linear in originals.items():
                    mask = learned[role].hard_mask(offset)
                    linear.weight.data[mask] = 0
                    model.replace_linear(block.module, role, linear)
                    report.layer_ratios[f"layers.{block.index}.{role}"] = mask.float().mean().item()
            block.module.to(dtype)
            del learned, dense_out
        report.timings = {"train_s": time.perf_counter() - start}
        report.knobs["final_block_loss"] = [round(x, 6) for x in losses]
        report.knobs["learned_block_sparsity"] = [round(x, 5) for x in expected]
        report.knobs["matching_offset"] = [round(x, 5) for x in offsets]
        return report

    @staticmethod
    def _train(block, learned, dense_out, goal, epochs, lr, d_coef, beta_weight) -> float:
        from prodigyopt import Prodigy

        optimizer = Prodigy([layer.logits for layer in learned.values()], lr=lr, d_coef=d_coef)
        last = 0.0
        samples = [(h[i : i + 1], {k: _row(v, i, h.shape[0]) for k, v in kw.items()}, out[i : i + 1])
                   for h, kw, out in zip(block.inputs, block.kwargs, dense_out) for i in range(h.shape[0])]
        with torch.enable_grad():
            for _ in range(epochs):
                for hidden, kwargs, reference in samples:
                    out = block.module(hidden.float(), **_float(kwargs))
                    out = out[0] if isinstance(out, tuple) else out
                    reference = reference.float()
                    scale = reference.reshape(-1, reference.shape[-1]).norm(dim=0)
                    l2 = (((reference - out) / scale) ** 2).sum() / reference.shape[-1]
                    sparsity = block_sparsity(learned)
                    loss = l2 + beta_weight * ((sparsity - goal) / goal) ** 2
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    last = float(loss.detach())
        return last


def _row(value, i: int, batch: int):
    """Sample i of a batched keyword argument (masks, rotary tables); others as they are."""
    if torch.is_tensor(value) and value.dim() >= 2 and value.shape[0] == batch and batch > 1:
        return value[i : i + 1]
    if isinstance(value, tuple):
        return tuple(_row(v, i, batch) for v in value)
    return value


def _float(kwargs: dict) -> dict:
    return {k: (tuple(t.float() if torch.is_tensor(t) and t.is_floating_point() else t for t in v)
                if isinstance(v, tuple) else v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in kwargs.items()}
