"""Masks for weight sparsity, shared by every pruning method.

Conventions, as in the Wanda and SparseGPT reference code: a mask is True where a weight is
*removed*; "N:M" keeps N of every M consecutive input weights of a row (2:4 removes 2 of
every 4: 50%).
"""

from __future__ import annotations

import torch

from harness.adapters import ModelAdapter


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


def weight_sparsity_for(model: ModelAdapter, ratio: float) -> float:
    """The uniform weight sparsity that removes ``ratio`` of the blocks' linear parameters.

    Biases are never pruned but count in the ratio's denominator (harness/targets.py), so
    models with biases (Qwen2, Phi-2) prune their weights slightly beyond ``ratio``.
    """
    weights = biases = 0
    for _, linear in model.named_linears():
        weights += linear.weight.numel()
        biases += linear.bias.numel() if linear.bias is not None else 0
    return min(1.0, ratio * (weights + biases) / weights)
