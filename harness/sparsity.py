"""Masks for weight sparsity, shared by every pruning method.

Conventions, as in the Wanda and SparseGPT reference code: a mask is True where a weight is
*removed*; "N:M" keeps N of every M consecutive input weights of a row (2:4 removes 2 of
every 4: 50%).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def prune_mask(scores: torch.Tensor, sparsity: float, n_m: tuple[int, int] | None = None,
               per_row: bool = True) -> torch.Tensor:
    """Boolean mask (True = prune) of the lowest-scoring weights.

    Unstructured: the ``sparsity`` fraction with the lowest scores, compared within each
    output row (``per_row``, Wanda's comparison group) or across the whole layer.
    N:M: in every group of M consecutive inputs of a row, the M − N lowest.
    """
    rows, cols = scores.shape
    if n_m is not None:
        n, m = n_m
        if cols % m:
            raise ValueError(f"{cols} input features are not divisible into groups of {m}")
        groups = scores.reshape(rows, cols // m, m)
        drop = torch.topk(groups, m - n, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, drop, True)
        return mask.reshape(rows, cols)
    if per_row:
        k = int(cols * sparsity)
        drop = torch.topk(scores, k, dim=1, largest=False).indices if k else None
        mask = torch.zeros_like(scores, dtype=torch.bool)
        return mask.scatter_(1, drop, True) if k else mask
    k = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        mask[torch.topk(scores.flatten(), k, largest=False).indices] = True
    return mask.reshape(rows, cols)


def mask_sparsity(linears: Iterable[nn.Linear], ratio: float) -> float:
    """The fraction of these linears' weight elements to mask so that they lose ``ratio`` of
    their nonzero parameters: the sparsity every pruning method asks its masks for.

    r counts nonzeros (harness/targets.py), and a checkpoint may already hold exact zeros
    (a dequantised GGUF holds ~5 %). Every method's score (|W|, |W|·‖X‖, W²/[H⁻¹]²_jj) is
    lowest for a zero weight, so a mask of k elements removes k − zeros nonzeros; biases are
    never pruned but count in r. Removing r · (nnz_W + nnz_b) then needs

        k = zeros_W + r · (nnz_W + nnz_b)        sparsity = k / numel_W

    which is r itself for a dense weight without bias. Called per layer, every layer loses
    the same fraction r of its nonzeros (the papers' uniform layer-wise sparsity).
    """
    numel = zeros = nonzeros = 0
    for linear in linears:
        weight_nonzeros = int(torch.count_nonzero(linear.weight.detach()))
        numel += linear.weight.numel()
        zeros += linear.weight.numel() - weight_nonzeros
        nonzeros += weight_nonzeros
        if linear.bias is not None:
            nonzeros += int(torch.count_nonzero(linear.bias.detach()))
    return min(1.0, (zeros + ratio * nonzeros) / numel)
