"""LLM-Pruner (block-wise), without its LoRA recovery: the harness compares post-training methods,
so its rows are the paper's "w/o tune" setting.

Paper: "LLM-Pruner: On the Structural Pruning of Large Language Models" (Ma, Fang & Wang,
NeurIPS 2023). Reference code: horseee/LLM-Pruner (``hf_prune.py``; ``TaylorImportance`` in
``LLMPruner/pruner/hf_llama_pruner.py``).

Groups are the dependency-coupled structures: a head (its rows of q, k, v and its columns of o)
and an MLP channel (its rows of gate and up, its column of down). With g the gradient of the
calibration loss (the mean next-token cross-entropy, one backward pass through the whole model)
and W a weight, each element scores

    param_first:  s = W ⊙ g          param_second: s = W² ⊙ E_n[g_n²]
    param_mix:    s = W ⊙ g − ½ W² ⊙ E_n[g_n²]

a row or column sums |s| (``vectorize``: |Σ s|), and a group sums its rows and columns over all
its linears. In each pruned block the lowest-scoring heads and channels are removed, the same
share in every block; the first and last blocks are not pruned.

From the reference: ``param_first`` (its scripts' setting) and the other three; the group sums
('sum' reduction); heads removed per block = ⌊channels to remove / head_dim⌋; blocks 4 to L − 3
pruned (its Llama-7B command: layers 4–29 of 32; knobs ``skip_first``, ``skip_last``, by
default those counts scaled to the model's depth: 4 and 2 of SmolLM2's 30). Ours:
the gradient comes from the first ``examples`` windows of the shared calibration set (the
reference: 10 random BookCorpus windows of 64 tokens); the share per pruned block is set so that
all blocks together lose the target ratio of their nonzero parameters, the MLP channels filling
what the whole heads leave; grouped-query attention as the reference's own route for it (``llama3.py``): whole KV
groups (a KV head, its query heads' q rows and o columns), counted on k's channels and scored by
the sum of the query heads they remove (the reference sums another set of query heads for a group:
``leaderboards/fidelity/llm_pruner_smollm2_cpu.md``); ``gqa_unit="query-head"`` removes query heads
one at a time instead, the KV head going with its group's last one, as Wanda-sp here does.
The gradient needs the whole model on the device at once (the reference computes it in float32
on a CPU); the scores are then applied block by block.
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from baselines.flap.units import BlockUnits, WidthPruning, remove_units
from harness.method import CompressionReport, Knob

TAYLOR = ("param_first", "param_second", "param_mix", "vectorize")


def calibration_gradients(model, windows: torch.Tensor, device, second: bool) -> tuple[dict, dict]:
    """(g, E_n[g_n²]) of every block linear's weight, g the gradient of the mean next-token
    cross-entropy over ``windows`` (the second dict only when ``second``)."""
    weights = {name: linear.weight for name, linear in model.named_linears()}
    net = model.model
    original = next(net.parameters()).device
    net.to(device)
    grads = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    squares = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()} if second else {}
    flags = {p: p.requires_grad for p in net.parameters()}
    try:
        for p in net.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for window in windows.split(1):
            ids = window.to(device)
            logits = net(ids, use_cache=False).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            net.zero_grad(set_to_none=True)
            loss.backward()
            for name, w in weights.items():
                grads[name] += w.grad.float() / len(windows)
                if second:
                    squares[name] += w.grad.float() ** 2 / len(windows)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
        net.to(original)
    return grads, squares


def taylor(mode: str, weight: torch.Tensor, grad: torch.Tensor, square: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Each row's (dim=1) or column's (dim=0) score."""
    w = weight.float()
    if mode in ("param_first", "vectorize"):
        s = w * grad
    elif mode == "param_second":
        s = w * w * square
    else:
        s = w * grad - 0.5 * w * w * square
    return s.sum(dim).abs() if mode == "vectorize" else s.abs().sum(dim)


class LLMPruner(WidthPruning):
    name = "llm-pruner"
    description = "heads and MLP channels by first-order Taylor importance, no LoRA recovery (Ma et al. 2023)"
    knobs = {"taylor": Knob(str, "param_first", "element score: param_first, param_second, param_mix or vectorize"),
             "examples": Knob(int, 10, "calibration windows the gradient is taken on"),
             "skip_first": Knob(int, -1, "blocks at the start left unpruned (-1: the reference's 4 of 32, scaled)"),
             "skip_last": Knob(int, -1, "blocks at the end left unpruned (-1: the reference's 2 of 32, scaled)"),
             "gqa_unit": Knob(str, "kv-group", "grouped-query attention: kv-group (a KV head with its query "
                                               "heads, the reference's llama3.py) or query-head")}
    variant_knobs = ("taylor", "examples", "skip_first", "skip_last", "gqa_unit")

    def compress(self, model, calibration, target):
        mode, unit = self.option(target, "taylor"), self.option(target, "gqa_unit")
        if mode not in TAYLOR:
            raise ValueError(f"llm-pruner: taylor must be one of {', '.join(TAYLOR)}, got {mode!r}")
        pruned, units, share = self.budget(model, target)
        start = time.perf_counter()
        windows = calibration.input_ids[: self.option(target, "examples")]
        grads, squares = calibration_gradients(model, windows, calibration.device, mode in ("param_second", "param_mix"))
        gradient_s = time.perf_counter() - start
        report = CompressionReport(knobs={"taylor": mode, "examples": len(windows),
                                          "blocks": f"{pruned.start}..{pruned.stop - 1}"})
        start = time.perf_counter()
        for index in pruned:
            block, block_units = model.blocks[index], units[index]
            heads_score, channel_score = self.group_scores(model, index, block, mode, grads, squares)
            heads = self.heads_to_remove(model, block_units.heads, heads_score, share, unit)
            channels = block_units.channels_for(share, heads, torch.argsort(channel_score, stable=True).tolist())
            remove_units(model, block, sorted(heads), channels)
            report.layer_ratios[f"layers.{index}.heads"] = len(heads) / block_units.heads
            report.layer_ratios[f"layers.{index}.mlp"] = len(channels) / block_units.channels
        report.timings = {"gradient_s": gradient_s, "prune_s": time.perf_counter() - start}
        return report

    def shape_probe(self, model, target):
        """The shapes without data: the same blocks, unit and counts as ``compress``, any units
        (speed and bytes depend on how many, not which)."""
        pruned, units, share = self.budget(model, target)
        for index in pruned:
            block_units = units[index]
            heads = self.heads_to_remove(model, block_units.heads, torch.zeros(block_units.heads), share,
                                         self.option(target, "gqa_unit"))
            channels = block_units.channels_for(share, heads, list(range(block_units.channels)))
            remove_units(model, model.blocks[index], sorted(heads), channels)

    def budget(self, model, target) -> tuple[range, list[BlockUnits], float]:
        """(the blocks pruned, every block's units, the share each pruned block loses) so that all
        blocks together lose the target ratio of their nonzero parameters."""
        if self.option(target, "gqa_unit") not in ("kv-group", "query-head"):
            raise ValueError(f"llm-pruner: gqa_unit must be kv-group or query-head, got {self.option(target, 'gqa_unit')!r}")
        depth = len(model.blocks)
        first, last = self.option(target, "skip_first"), self.option(target, "skip_last")
        first = round(depth * 4 / 32) if first < 0 else first
        last = depth - (round(depth * 2 / 32) if last < 0 else last)
        if not 0 <= first < last <= depth:
            raise ValueError(f"llm-pruner: no block left to prune between {first} and {last} of {depth}")
        units = [BlockUnits(model, block) for block in model.blocks]
        pruned = range(first, last)
        share = target.ratio * sum(u.total for u in units) / sum(units[i].total for i in pruned)
        if share >= 1:
            raise ValueError(f"llm-pruner reaches at most r = {sum(units[i].total for i in pruned) / sum(u.total for u in units):.3f} "
                             f"pruning blocks {first}..{last - 1}; asked {target.ratio}")
        return pruned, units, share

    @staticmethod
    def heads_to_remove(model, n_heads: int, heads_score: torch.Tensor, share: float, unit: str) -> set[int]:
        """The query heads a block loses. The reference counts the units on its root's channels:
        q's for one KV head per query head (``hf_prune.py``); k's, in whole KV groups (a KV head with
        the query heads that read it), for grouped-query models (``llama3.py``, ``unit="kv-group"``),
        a group scored by the sum of the query heads it removes."""
        hd, groups = model.head_dim, model.num_kv_heads
        if unit == "kv-group" and groups < n_heads:
            per = n_heads // groups
            n_groups = (groups * hd - int(groups * hd * (1 - share))) // hd
            lowest = torch.argsort(heads_score.reshape(groups, per).sum(1), stable=True)[:n_groups].tolist()
            return {g * per + i for g in lowest for i in range(per)}
        n = (n_heads * hd - int(n_heads * hd * (1 - share))) // hd
        return set(torch.argsort(heads_score, stable=True)[:n].tolist())

    @staticmethod
    def group_scores(model, index, block, mode, grads, squares) -> tuple[torch.Tensor, torch.Tensor]:
        """(per query head, per MLP channel) Taylor scores summed over the group's rows and columns."""
        linears = model.linears(block)
        H, G, hd = model.num_heads, model.num_kv_heads, model.head_dim

        def rows(role):
            name = f"layers.{index}.{role}"
            lin = linears[role]
            return taylor(mode, lin.weight, grads[name], squares.get(name), dim=1)

        def columns(role):
            name = f"layers.{index}.{role}"
            return taylor(mode, linears[role].weight, grads[name], squares.get(name), dim=0)

        if "qkv" in linears:
            fused = rows("qkv")
            parts = model.fused_rows("qkv", linears["qkv"])
            q, k, v = (fused[parts[r]] for r in ("q", "k", "v"))
        else:
            q, k, v = rows("q"), rows("k"), rows("v")
        per = H // G
        kv = (k + v).reshape(G, hd).sum(1).repeat_interleave(per) / per  # a KV head's score shared by its queries
        heads = q.reshape(H, hd).sum(1) + columns("o").reshape(H, hd).sum(1) + kv
        channels = columns("down")
        for role in model.arch.mlp_inputs:
            r = rows(role)
            channels = channels + (r.reshape(-1, channels.shape[0]).sum(0) if role in model.arch.fused else r)
        return heads, channels
