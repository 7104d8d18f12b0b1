"""IntraSlice's global allocation: per-layer ratios from Fisher importance of structure masks.

As the authors' code computes it (``pruning_src/global_prune_rate``, default
``--global_layer_rate global``, ``--global_bias 1.0``, ``--global_frac 1``):

1. A mask of ones multiplies each block's o_proj input (one entry per attention channel)
   and down_proj input (one per MLP neuron). The LM loss of every calibration window is
   back-propagated to the masks. Per-window gradients are summed over groups of 8
   consecutive windows (16 groups for 128 windows: "merging gradients to improve
   stability"). Summing a group's gradients equals back-propagating the sum of its
   windows' losses, so one backward pass per group of 8 gives them.
2. Fisher importance, over groups:  head h of layer l: Σ (Σ_{c∈h} g_c)²  (the gradient of a
   mask on the whole head); neuron j: Σ g_j².
3. Parameter budget: a head costs d·hd (q) + 2·(G/H)·d·hd (its share of k and v) + hd·d
   (o); a neuron 3d (gate, up, down). For sparsity s and bias b the MLPs keep the
   ⌊L·F·(1 − s·b)⌋ most important neurons of the whole model, and the attention keeps the
   most important heads that fill what is left of (1 − s) of the budget.
4. Per layer: attention ratio 1 − kept heads / H, MLP ratio 1 − kept neurons / F, each
   capped at 0.8 with the excess spread over the other pruned layers
   (``recorrect_prune_rate`` in the authors' code: in proportion to each layer's ratio).

Block by block (ours): the authors back-propagate through the whole model on one GPU;
here the forward pass keeps each block's input, and the backward pass recomputes one block
at a time from it (gradient checkpointing at block granularity), so only one block's
activations are ever live and the model can stay offloaded like everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.calibration import Calibration, capture_block_inputs
from harness.models.adapters import ModelAdapter

GROUP = 8  # windows whose gradients are summed (the authors' ``group = 8``)
MAX_RATIO = 0.8  # per-layer cap (``recorrect_prune_rate(..., max_prune_rate=0.8)``)


def mask_gradients(model: ModelAdapter, calibration: Calibration) -> tuple[torch.Tensor, torch.Tensor]:
    """∂loss/∂mask per group of windows: attention (groups, L, H·hd) and MLP (groups, L, F)."""
    device = calibration.device
    ids = calibration.input_ids
    group = GROUP if len(ids) % GROUP == 0 else 1
    hidden, kwargs_by_block = capture_block_inputs(model, ids, device, group)
    blocks = model.blocks
    flags = [p.requires_grad for p in model.model.parameters()]
    for p in model.model.parameters():
        p.requires_grad_(False)
    masks, handles = [], []
    for block in blocks:
        linears = model.linears(block)
        pair = (torch.ones(linears["o"].in_features, device=device, requires_grad=True),
                torch.ones(linears["down"].in_features, device=device, requires_grad=True))
        masks.append(pair)
        for linear, mask in zip((linears["o"], linears["down"]), pair):
            handles.append(linear.register_forward_pre_hook(
                lambda module, args, mask=mask: (args[0] * mask.to(args[0].dtype),) + args[1:]))
    head_grads, neuron_grads = [], []
    outer = [model.final_norm, model.lm_head]
    try:
        for batch, (h0, window_ids) in enumerate(tqdm(list(zip(hidden, ids.split(group))),
                                                      desc="intraslice: mask gradients", leave=False,
                                                      disable=None)):
            inputs = [h0]
            with torch.no_grad():  # forward, keeping each block's input
                for index, block in enumerate(blocks):
                    block.to(device)
                    out = block(inputs[-1], **kwargs_by_block[index][batch])
                    inputs.append(out[0] if isinstance(out, tuple) else out)
                    block.to("cpu")
            top = inputs.pop().detach().requires_grad_(True)
            for m in outer:
                m.to(device)
            targets = window_ids.to(device)
            for s in range(top.shape[0]):  # one window's logits at a time (vocab × length is large)
                logits = model.logits(top[s:s + 1]).float()
                loss = F.cross_entropy(logits[0, :-1], targets[s, 1:])  # HF's shifted mean
                loss.backward()
            for m in outer:
                m.to("cpu")
            grad = top.grad
            for index in reversed(range(len(blocks))):  # backward, one block at a time
                block = blocks[index].to(device)
                x = inputs[index].detach().requires_grad_(True)
                with torch.enable_grad():
                    out = block(x, **kwargs_by_block[index][batch])
                    out = out[0] if isinstance(out, tuple) else out
                    torch.autograd.backward(out, grad)
                grad = x.grad
                block.to("cpu")
            head_grads.append(torch.stack([m[0].grad.detach().float().cpu() for m in masks]))
            neuron_grads.append(torch.stack([m[1].grad.detach().float().cpu() for m in masks]))
            for pair in masks:
                for mask in pair:
                    mask.grad = None
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(model.model.parameters(), flags):
            p.requires_grad_(flag)
    return torch.stack(head_grads), torch.stack(neuron_grads)


def fisher_importance(model: ModelAdapter, head_grads: torch.Tensor, neuron_grads: torch.Tensor):
    """(L, H) head importance and (L, F) neuron importance from per-group mask gradients."""
    n, L, A = head_grads.shape
    heads = head_grads.view(n, L, model.num_heads, A // model.num_heads).sum(-1)
    return heads.pow(2).sum(0), neuron_grads.pow(2).sum(0)


def recorrect(ratios: torch.Tensor, cap: float = MAX_RATIO) -> torch.Tensor:
    """Cap per-layer ratios at ``cap``; spread the excess over the layers pruned below it,
    largest first, each in proportion to its share of what is left (the authors' rule)."""
    ratios = ratios.clone().float()
    over = ratios > cap
    excess = float((ratios[over] - cap).sum())
    ratios[over] = cap
    under = (ratios < cap) & (ratios > 0)
    if excess <= 1e-6 or not bool(under.any()):
        return ratios
    values, order = torch.sort(ratios[under], descending=True)
    for i in range(len(values)):
        rest = float(values[i:].sum())
        add = min(excess * float(values[i]) / rest, cap - float(values[i])) if rest > 0 else 0.0
        values[i] += add
        excess -= add
        if excess <= 1e-6:
            break
    ratios[under] = values.gather(0, order.argsort())
    return ratios


def head_cost(model: ModelAdapter) -> float:
    """Parameters one attention head stands for in the authors' budget (Llama layout)."""
    d, hd, H, G = model.hidden_size, model.head_dim, model.num_heads, model.num_kv_heads
    return d * hd + 2 * G / H * d * hd + hd * d


def global_ratios(model: ModelAdapter, head_importance: torch.Tensor, neuron_importance: torch.Tensor,
                  sparsity: float, bias: float = 1.0) -> torch.Tensor:
    """(L, 2) per-layer [attention, MLP] ratios for the authors' ``--sparsity``."""
    L, H = head_importance.shape
    width = neuron_importance.shape[1]
    per_head, per_neuron = head_cost(model), 3 * model.hidden_size
    budget = (1 - sparsity) * L * (per_head * H + per_neuron * width)
    neurons = int(L * width * (1 - sparsity * bias))
    heads = max(int((budget - neurons * per_neuron) / per_head), 0)
    head_mask = torch.zeros(L * H)
    head_mask[head_importance.reshape(-1).sort(descending=True).indices[:heads]] = 1
    neuron_mask = torch.zeros(L * width)
    neuron_mask[neuron_importance.reshape(-1).sort(descending=True).indices[:neurons]] = 1
    attention = 1 - head_mask.view(L, H).sum(1) / H
    mlp = 1 - neuron_mask.view(L, width).sum(1) / width
    return torch.stack([recorrect(attention), recorrect(mlp)], dim=1)


def uniform_ratios(layers: int, sparsity: float) -> torch.Tensor:
    """``--global_layer_rate uniform``: the same ratio for every attention and MLP."""
    return torch.full((layers, 2), float(sparsity))
