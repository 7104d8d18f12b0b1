"""RIA's channel permutation for N:M sparsity: choose the order of a linear's input columns so
that each group of M consecutive columns, pruned to its N best per row, keeps as much score as
possible.

A mask is N:M in the permuted order; the weight stays in its own order with that mask applied,
so its inputs must be permuted at run time to serve it on N:M kernels (the reference's
``semi_sparse_acc`` path stores ``W[:, order]``). The steps, after the reference
(``lib/prune.py``, ``prune_ria`` with ``--reallocation --lsa``):

1. heuristic reallocation: rank the columns by their summed score, cut the ranking into M equal
   runs, and let run k fill position k of every group, odd runs reversed, so that each group
   gets one column of each importance band;
2. linear sum assignment, once per position p of the M: with the other M − 1 columns of every
   group held, reassign the columns at position p among the groups so that the total kept score
   is the largest (``scipy.optimize.linear_sum_assignment``).
"""

from __future__ import annotations

import torch


def kept_score(scores: torch.Tensor, order: torch.Tensor, n: int, m: int) -> float:
    """The score an N:M mask keeps, in ``order``: each row's n best of every group of m."""
    groups = scores[:, order].reshape(scores.shape[0], -1, m)
    return float(groups.topk(n, dim=-1).values.sum())


def reallocate(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Step 1: a column order in which group g holds one column of each of m importance bands."""
    columns = scores.shape[1]
    ranked = scores.sum(0).argsort()
    order = torch.empty_like(ranked)
    for k in range(m):
        band = ranked[columns * k // m: columns * (k + 1) // m]
        order[k::m] = band if k % 2 == 0 else band.flip(0)
    return order


def assign_position(scores: torch.Tensor, order: torch.Tensor, n: int, m: int, position: int) -> torch.Tensor:
    """Step 2 at one position: the assignment of the columns now at ``position`` to groups that
    keeps the most score, the other columns of every group held."""
    from scipy.optimize import linear_sum_assignment

    groups = order.reshape(-1, m)
    held = groups[:, [q for q in range(m) if q != position]]  # (G, m − 1)
    candidates = groups[:, position]  # (G,)
    count = groups.shape[0]
    gain = torch.empty(count, count, dtype=torch.float64)
    for g in range(count):  # group g's held columns beside each candidate column
        columns = torch.cat([held[g].expand(count, m - 1), candidates[:, None]], 1)  # (G, m)
        gain[g] = scores[:, columns].topk(n, dim=-1).values.sum((0, 2)).double().cpu()
    _, chosen = linear_sum_assignment(gain.numpy(), maximize=True)
    new = groups.clone()
    new[:, position] = candidates[torch.as_tensor(chosen, device=order.device)]
    return new.reshape(-1)


def permuted_order(scores: torch.Tensor, n: int, m: int, lsa: bool = True) -> torch.Tensor:
    """The column order RIA prunes an N:M mask in (``scores``: out × in, in divisible by m)."""
    order = reallocate(scores, m)
    if lsa:
        for position in range(m):
            order = assign_position(scores, order, n, m, position)
    return order


def mask_in_order(scores: torch.Tensor, order: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The N:M mask (True: pruned) chosen in ``order``, mapped back to the weight's own columns."""
    permuted = scores[:, order].reshape(scores.shape[0], -1, m)
    pruned = torch.zeros_like(permuted, dtype=torch.bool)
    pruned.scatter_(-1, permuted.topk(m - n, dim=-1, largest=False).indices, True)
    mask = torch.empty_like(pruned.reshape(scores.shape))
    mask[:, order] = pruned.reshape(scores.shape)
    return mask
