"""What FLAP and Wanda-sp share: the units they remove (query heads, MLP channels), what each
costs in parameters, the input statistics of o_proj and down_proj, and the surgery."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.calibration import BlockStep
from harness.method import Method, Target
from harness.models.adapters import ModelAdapter
from harness.models.slicing import linear_from, slice_attention, slice_mlp


@dataclass
class InputMoments:
    """Per input channel of one linear, over the calibration tokens (float64)."""

    mean: torch.Tensor
    variance: torch.Tensor  # sample variance
    sqnorm: torch.Tensor  # Σ x²: Wanda's ‖X_j‖²
    tokens: int


@torch.no_grad()
def output_moments(step: BlockStep, roles=("o", "down")) -> dict[str, InputMoments]:
    """The moments of the inputs of o_proj and down_proj, from one pass of the block as it is."""
    linears = step.linears
    sums: dict[str, list] = {}

    def hook(role):
        def accumulate(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            s = sums.setdefault(role, [0.0, 0.0, 0])
            s[0], s[1], s[2] = s[0] + x.sum(0), s[1] + (x * x).sum(0), s[2] + x.shape[0]
        return accumulate

    handles = [linears[role].register_forward_hook(hook(role)) for role in roles]
    try:
        step.forward()
    finally:
        for h in handles:
            h.remove()
    moments = {}
    for role, (total, squares, n) in sums.items():
        mean = total / n
        moments[role] = InputMoments(mean, (squares - n * mean * mean) / max(n - 1, 1), squares, n)
    return moments


def _nonzeros(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Nonzero entries of each row (dim=1) or column (dim=0)."""
    return (weight != 0).sum(dim)


class BlockUnits:
    """One block's removable units and the nonzero parameters each holds (r counts nonzeros):
    query head h (its q rows and o columns; its KV head's k and v rows go with the group's last
    query head), MLP channel c (its row of every MLP input and its down_proj column)."""

    def __init__(self, model: ModelAdapter, block: nn.Module):
        H, G, hd = model.num_heads, model.num_kv_heads, model.head_dim
        self.heads, self.groups, self.per = H, G, H // G
        linears = model.linears(block)

        def rows(role):  # (weight rows, bias) of q, k or v, fused or not
            if role in linears:
                lin = linears[role]
                return lin.weight, lin.bias
            lin = linears["qkv"]
            part = model.fused_rows("qkv", lin)[role]
            return lin.weight[part], None if lin.bias is None else lin.bias[part]

        def per_unit(weight, bias, size):  # nonzeros of each unit's rows (and bias entries)
            counts = _nonzeros(weight, 1) + (0 if bias is None else (bias != 0).long())
            return counts.reshape(-1, size).sum(1)

        q, k, v = rows("q"), rows("k"), rows("v")
        o = linears["o"].weight
        self.head_costs = per_unit(*q, hd) + _nonzeros(o, 0).reshape(H, hd).sum(1)
        self.group_costs = per_unit(*k, hd) + per_unit(*v, hd)
        down = linears["down"]
        self.channels = down.in_features
        costs = _nonzeros(down.weight, 0)
        for role in model.arch.mlp_inputs:
            lin = linears[role]
            parts = model.fused_rows(role, lin).values() if role in model.arch.fused else [slice(None)]
            for part in parts:
                costs = costs + per_unit(lin.weight[part], None if lin.bias is None else lin.bias[part], 1)
        self.channel_costs = costs
        #: Parameters a compensating bias adds, per module: none where the linear has a bias already.
        self.bias_costs = {"head": 0 if linears["o"].bias is not None else linears["o"].out_features,
                           "channel": 0 if down.bias is not None else down.out_features}

    def removed(self, heads: set[int], channels) -> int:
        """Nonzero parameters removed by deleting ``heads`` and ``channels`` (indices)."""
        emptied = [g for g in range(self.groups) if all(g * self.per + i in heads for i in range(self.per))]
        return int(self.head_costs[sorted(heads)].sum() + self.group_costs[emptied].sum()
                   + self.channel_costs[list(channels)].sum())

    @property
    def total(self) -> int:
        """Every nonzero parameter the units hold."""
        return self.removed(set(range(self.heads)), range(self.channels))

    def channels_for(self, ratio: float, heads: set[int], order: list[int]) -> list[int]:
        """The first channels of ``order`` that, beside ``heads``, bring the removed parameters
        nearest to ``ratio`` of ``total`` (one channel at least stays)."""
        need = ratio * self.total - self.removed(heads, [])
        cumulative = torch.cumsum(self.channel_costs[order].double(), 0)
        count = int(torch.searchsorted(cumulative, torch.tensor([need], dtype=torch.float64)))  # count: still short
        below = float(cumulative[count - 1]) if count else 0.0
        if count < len(order) and abs(float(cumulative[count]) - need) < abs(below - need):
            count += 1
        return list(order[:min(count, self.channels - 1)])


@torch.no_grad()
def remove_units(model: ModelAdapter, block: nn.Module, heads: list[int], channels: list[int],
                 means: dict[str, torch.Tensor] | None = None) -> None:
    """Delete query ``heads`` (a KV head whose query heads are all gone goes too) and MLP
    ``channels``. With ``means`` (input means of o_proj and down_proj), each removed input's
    mean contribution becomes a bias of o_proj / down_proj (FLAP's compensation)."""
    H, G, hd = model.num_heads, model.num_kv_heads, model.head_dim
    per = H // G
    linears = model.linears(block)
    o, down = linears["o"], linears["down"]
    if heads:
        kept_heads = [h for h in range(H) if h not in heads]
        groups = sorted({h // per for h in kept_heads})
        columns = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in kept_heads]).to(o.weight.device)
        removed = torch.tensor([c for c in range(H * hd) if c // hd in heads], device=o.weight.device)
        eye = torch.eye(hd, dtype=torch.float64)
        slice_attention(model, block, sorted(heads), None, {g: eye for g in groups}, o.weight.double()[:, columns])
        bias = _compensated(o, removed, means and means.get("o"))
        new_o = model.linears(block)["o"]
        model.replace_linear(block, "o", linear_from(new_o.weight, bias, new_o))
    if channels:
        kept = torch.tensor([c for c in range(down.in_features) if c not in set(channels)], device=down.weight.device)
        removed = torch.tensor(sorted(channels), device=down.weight.device)
        bias = _compensated(down, removed, means and means.get("down"))
        slice_mlp(model, block, kept, down.weight[:, kept])
        new_down = model.linears(block)["down"]
        model.replace_linear(block, "down", linear_from(new_down.weight, bias, new_down))


def _compensated(linear: nn.Linear, removed: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor | None:
    """The linear's bias plus W[:, removed] · mean[removed] (None: no compensation asked, no bias)."""
    if mean is None:
        return linear.bias
    extra = linear.weight.double()[:, removed] @ mean.to(linear.weight.device)[removed]
    return (extra if linear.bias is None else linear.bias.double() + extra).to(linear.weight.dtype)


class WidthPruning(Method):
    """Heads and MLP channels out; the shape probe removes them uniformly (speed depends on how
    many, not which)."""

    kind = "structured"

    def shape_probe(self, model: ModelAdapter, target: Target) -> None:
        for block in model.blocks:
            units = BlockUnits(model, block)
            heads = set(range(int(target.ratio * units.heads)))
            remove_units(model, block, sorted(heads), units.channels_for(target.ratio, heads, list(range(units.channels))))
