"""Serving-time fusion: the linears that read one input run as one matrix product.

Serving engines store q/k/v as one matrix and gate/up as another (vLLM's ``QKVParallelLinear``
and ``MergedColumnParallelLinear``, gpt-fast's ``wqkv`` and ``w1``/``w3``): one launch and one
larger product instead of three or two. At decode every product is a memory-bound GEMV of a
few microseconds, so launches and small-kernel tails are a large part of the step; a larger
2:4 product also suits the sparse kernels better. The speed step fuses every model it
measures the same way, dense or compressed, so speedups compare like with like.

Which linears share an input is the adapter's knowledge (``Architecture.norm_readers``:
Llama's q, k, v and gate, up; Phi-2's q, k, v, up). The model's own attention and MLP code
still calls ``q_proj(x)``, ``k_proj(x)``, ``v_proj(x)``: each becomes a ``FusedMember`` that
returns its slice of the group's one product, computed on the first member's call and
dropped once every member has read it (no state survives a step, so ``torch.compile`` sees
the same module state on every call). ``fused_projections`` undoes it all afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from harness.models.adapters import ModelAdapter


class SharedInputGroup(nn.Module):
    """The stacked weight of linears that read one input; one product serves them all."""

    def __init__(self, linears: list[nn.Linear], roles: tuple[str, ...] = ()):
        super().__init__()
        self.roles = tuple(roles)  # the adapter's names of the stacked linears, in order
        first = linears[0]
        self.sizes = [lin.out_features for lin in linears]
        if type(first) is not nn.Linear:  # a packed linear stacks its own kind (``stackable``)
            self.fused = type(first).stack(linears)
        else:
            bias = any(lin.bias is not None for lin in linears)
            self.fused = nn.Linear(first.in_features, sum(self.sizes), bias=bias,
                                   device=first.weight.device, dtype=first.weight.dtype)
            with torch.no_grad():
                self.fused.weight.copy_(torch.cat([lin.weight for lin in linears]))
                if bias:
                    self.fused.bias.copy_(torch.cat([lin.bias if lin.bias is not None
                                                     else lin.weight.new_zeros(lin.out_features) for lin in linears]))
        # While ``counting`` (the first, eager step), products are counted: one per step when the
        # members really share their input. Off afterwards: a counter that changes on every call
        # would make torch.compile guard on it and recompile every step.
        self.counting, self.products = True, 0
        self._input: torch.Tensor | None = None
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._read = 0

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self._input is not x:  # the first member of this step (or an input not shared)
            self._input, self._outputs, self._read = x, self.fused(x).split(self.sizes, dim=-1), 0
            if self.counting:
                self.products += 1
        out = self._outputs[index]
        self._read += 1
        if self._read == len(self.sizes):  # every member has its slice: forget the step
            self._input, self._outputs, self._read = None, (), 0
        return out


class FusedMember(nn.Module):
    """Stands where one of the group's linears stood; returns that linear's output."""

    def __init__(self, group: SharedInputGroup, index: int, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features, self.index = in_features, out_features, index
        self.group = [group]  # a list: the group's weight belongs to the block once, not per member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group[0].output(x, self.index)


def shared_input_roles(adapter: ModelAdapter) -> list[tuple[str, ...]]:
    """Groups of ≥ 2 linear roles that read the same normed input, in the adapter's order."""
    return [tuple(r for r in readers if r in adapter.arch.linears) for readers in adapter.arch.norm_readers.values()
            if len([r for r in readers if r in adapter.arch.linears]) >= 2]


@contextlib.contextmanager
def fused_projections(adapter: ModelAdapter, offload: bool = True) -> Iterator[list[SharedInputGroup]]:
    """Fuse every block's shared-input linears for the duration of the ``with``; yields the
    groups (each holds one ``fused`` linear: an nn.Linear, which may be swapped for a sparse-kernel
    linear, or the stack of packed linears of one format). The original linears wait on the CPU (``offload``) and come back afterwards."""
    saved, groups = [], []
    for block in adapter.blocks:
        for roles in shared_input_roles(adapter):
            linears = [adapter.linears(block)[r] for r in roles]
            if not (all(type(lin) is nn.Linear for lin in linears) or stackable(linears)):
                continue  # already replaced (a sparse-kernel linear, say): leave the group alone
            group = SharedInputGroup(linears, roles)
            block.add_module(f"fused_{'_'.join(roles)}", group)
            groups.append(group)
            for index, (role, lin) in enumerate(zip(roles, linears)):
                saved.append((block, role, lin, next(iter([*lin.parameters(), *lin.buffers()])).device))
                adapter.replace_linear(block, role, FusedMember(group, index, lin.in_features, lin.out_features))
                if offload:
                    lin.to("cpu")
    try:
        yield groups
    finally:
        for block, role, lin, device in saved:
            adapter.replace_linear(block, role, lin.to(device))
        for block in adapter.blocks:
            for name in [n for n, m in block.named_children() if isinstance(m, SharedInputGroup)]:
                delattr(block, name)


def stackable(linears: list[nn.Module]) -> bool:
    """Replaced linears of one class that can be stacked into one: the class defines
    ``can_stack(linears)`` and ``stack(linears)`` (a quantized linear of one format, say)."""
    kind = type(linears[0])
    return all(type(lin) is kind for lin in linears) and hasattr(kind, "can_stack") and kind.can_stack(linears)


def fused_groups(model: nn.Module) -> list[SharedInputGroup]:
    return [m for m in model.modules() if isinstance(m, SharedInputGroup)]


class FusionError(RuntimeError):
    """Members of a group did not read one input in a step: fusing would multiply the work."""


def check_one_product_per_step(model: nn.Module, steps: int = 1) -> int:
    """After ``steps`` eager steps: every group computed exactly one product per step and holds
    nothing over. Stops counting (see ``SharedInputGroup.counting``); returns the group count."""
    groups = fused_groups(model)
    for group in groups:
        if group.products != steps or group._input is not None:
            raise FusionError(f"a fused group computed {group.products} products in {steps} step(s) "
                              "(its linears do not read one input here)")
        group.counting = False
    return len(groups)
