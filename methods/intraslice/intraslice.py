"""IntraSlice, as its authors built it, physically sliced.

Paper: "IntraSlice: Towards High-Performance Structural Pruning with Block-Intra PCA for
LLMs" (Li, Wang, Shao, Hu, Fang, Zhang, Wei, Cheng; arXiv 2602.01975, 2026). Code:
github.com/Asker0Lee/IntraSlice at 8a82edd (``run_IntraSlice.py``; per layer
``LlamaModelAdapter.prune_model`` → ``Pruner.get_mask_weight_adjust_mha2`` /
``get_mask_weight_adjust_lm`` in ``pruning_src/prune_utils_llama.py``, math in
``pruning_src/prune_method.py``; allocation in ``pruning_src/global_prune_rate``, see
``allocation.py``). The code is the authority where it and the paper differ. Every line
below comes from the code unless marked *paper* or *ours*.

Per decoder block, sequentially (statistics from the inputs the already pruned blocks
produce), attention first, then the MLP through the pruned attention:

Attention, for the layer's ratio a (fraction of the H·hd attention channels to drop;
keep = H·hd − round(H·hd·a)):
1. Heads. X is o_proj's input (the dense attention output), Σ = XᵀX. Channel score
   s_c = Σ_i W_o[i, c]² Σ_cc; n_h = how many of the top ``keep`` channels fall in head h.
   Per head, the normalised eigenvalues λ_h,j / Σ_j λ_h,j of Σ's diagonal block, times the
   head's total channel score, give score[h, j]. Heads with n_h < ⌊keep/H⌋ // 4 are deleted;
   then, repeatedly, the weakest remaining head is deleted if keeping ⌊keep/(remaining−1)⌋
   components in each of the others retains more score than ⌊keep/remaining⌋ does. If the
   per-head width is then below 3/4 of head_dim (the code's 96 for head_dim 128), the
   weakest heads are deleted until it is not. Final width w = 2·round(keep / remaining / 2).
2. Q/K (RoPE commutes with no rotation, so no PCA): score each dimension by the mean of
   |q ⊙ k| (after RoPE) over tokens, summed over the kept heads of a KV group; fold
   dimension j with j + hd/2 (the pair RoPE rotates together); keep the top w/2 pairs per
   group, one set shared by the group's heads. W_q and W_k lose the rows of dropped pairs
   and RoPE runs on the kept frequencies only (``harness.models.attention.SlicedAttention``);
   the softmax keeps the dense 1/√hd scale, as the code's masked q/k do.
3. V/O. Recompute the attention output R with the sliced Q/K and the deleted heads zeroed.
   Per KV group, U_g = top-w eigenvectors of Σ_{kept h ∈ g} R_hᵀR_h. With Z = per-head
   coordinates Rₕ U_g, o_proj is refit by ridge regression onto the *dense* output X:
       W_o' = W_o · XᵀZ (ZᵀZ + λI)⁻¹,   λ = 1 % of the mean diagonal of the projected R's Gram
   (the code's ``get_pinverse_svd(new_x, X)`` with new_x = R U Uᵀ, written in the kept
   coordinates: algebraically the same matrix, folded). U_gᵀ folds into W_v's rows of
   group g. Value heads become w wide; nothing is added.
MLP, for the layer's ratio m: Σ = Gram of down_proj's input, λ = 1 % of its mean diagonal.
4. Score neuron j by Σ_i W_down[i, j]² (Σ_jj + λ); drop round(F·m) rounded down to a
   multiple of 8; refit down_proj from kept (S) to dropped (D) neurons (Nyström):
       W_down' = W_down[:, S] + W_down[:, D] Σ_DS (Σ_SS + λI)⁻¹
   gate/up lose the dropped rows. The code's optional learned refinement (``--iterpca``,
   off by default) is not implemented.
5. Per-layer ratios: ``allocation.py`` (Fisher importance of o_proj/down_proj input
   masks; the code's default ``--global_layer_rate global``). ``-uniform``: every layer at s.

Where the code only *simulates* (it masks q/k after RoPE at run time, zero-fills o_proj and
down_proj columns and leaves v/gate/up whole), this module slices: fewer heads, fewer RoPE
pairs, narrower V, smaller MLP; the KV cache shrinks with them (*ours*, from the code's
speed-test module ``scripts/modules/IntraSlice_module.py``). Deleted heads leave uneven KV
groups; their KV heads are shared by index. A KV group whose heads are all deleted loses
its K/V rows.

Ratio accounting (*ours*). The code's ``--sparsity`` s sets the budget in its own units
(heads, neurons; see ``allocation.py``): it is the knob ``sparsity``. The harness matches
r, the nonzeros removed from all block linears. Without ``sparsity``, s is solved so that
the predicted r (allocation and rounding rules, no head deletion) meets the target. Head
deletions then keep more K/V (the remaining heads of a group get wider), and that drift is
carried into the MLP width of the same and later layers in multiples of 8, so the measured
r meets the target in one sweep. The record keeps both widths (``mlp_planned``, ``mlp``):
how far the correction moved each layer is read off them (a few percent of a layer's neurons
on SmolLM2). With
``-o intraslice.sparsity=S`` nothing is corrected: the authors' run, reproduced.

The code's flags and their defaults (``run_IntraSlice.py``), and what they are here:
``--sparsity 0.4`` → knob ``sparsity`` (default: solved from the target r); ``--global_layer_rate
global`` → ``intraslice`` (``uniform`` → ``intraslice-uniform``; ``global_pca``, which rotates
the head gradients into per-head PCA bases, is not implemented); ``--global_bias 1.0`` →
knob ``bias``; ``--global_frac 1`` (a head is one allocation unit) → fixed; ``--iterpca`` off →
not implemented; ``--nsamples 128``, ``--seed 0``, ``--dataset wikitext2`` → the harness's
shared calibration set (default 128 × 2048, seed 0); the model in float16 → the harness's
``--dtype`` (float16 on a GPU). Ablations (*ours*): ``-vo`` and ``-mlp`` zero the other
module's ratios and solve s again; ``-vo`` has no MLP to absorb the head deletions' drift,
so the next layers' attention ratios absorb it; ``-noqk`` keeps every RoPE pair.

Differences from the code, and why: fp64 statistics and fp32 recomputed attention (the
code recomputes attention in fp16); calibration in batches (sums, so the same statistics);
the code's score for Q/K pairs sums per-window means, ours per-batch means (the same
ranking: every window has the same length).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from harness.calibration import BlockStep
from harness.method import CompressionReport, Knob, Method
from harness.models.adapters import ModelAdapter
from harness.models.attention import apply_rotary, pair_dimensions
from harness.models.slicing import slice_attention, slice_mlp
from harness.targets import count_parameters

from . import allocation

DAMP = 0.01  # the code's percdamp everywhere: 1 % of a Gram's mean diagonal
MLP_ALIGN = 8  # dropped neurons in multiples of 8 ("round to 8 for faster inference")
WIDTH_FLOOR = 0.75  # of head_dim: the code's 96 for head_dim 128


# --- attention statistics ---------------------------------------------------------------
def _qkv(model: ModelAdapter, block: nn.Module, hidden: torch.Tensor, position_embeddings):
    """Dense q (B, H, L, hd), k and v (B, G, L, hd), q and k after RoPE."""
    H, G, hd = model.num_heads, model.num_kv_heads, model.head_dim
    B, L, _ = hidden.shape
    linears = model.linears(block)
    if "qkv" in linears:
        q, k, v = linears["qkv"](hidden).split([H * hd, G * hd, G * hd], dim=-1)
    else:
        q, k, v = (linears[r](hidden) for r in ("q", "k", "v"))
    q, k, v = (t.view(B, L, -1, hd).transpose(1, 2).float() for t in (q, k, v))
    if position_embeddings is not None:
        cos, sin = (t.float() for t in position_embeddings)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    return q, k, v


def _attend(q, k, v, mask) -> torch.Tensor:
    """Causal attention of (B, H, L, ·) tensors, KV heads already repeated to H."""
    if mask is not None and mask.dim() == 4:  # scale: 1/√head_dim, the dense one (q is full width)
        m = mask[:, :, :, : k.shape[-2]]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m if m.dtype == torch.bool else m.float())
    return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[-2] > 1)


def _hook_attention(step: BlockStep, model: ModelAdapter, on_inputs, on_o_input):
    """Run the block once over the calibration set, handing ``on_inputs`` the attention's
    (hidden, position_embeddings, mask) and ``on_o_input`` o_proj's input, per batch."""
    attention = model.attention(step.module)

    def pre(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        on_inputs(hidden, kwargs.get("position_embeddings"), kwargs.get("attention_mask"))

    handles = [attention.register_forward_pre_hook(pre, with_kwargs=True),
               step.linears["o"].register_forward_pre_hook(lambda m, args: on_o_input(args[0]))]
    try:
        step.forward()
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def attention_scores(step: BlockStep, model: ModelAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ = XᵀX of o_proj's input (float64), and Σ_batches mean|q ⊙ k| per (head, dimension)."""
    H, G = model.num_heads, model.num_kv_heads
    acc = {"gram": None, "qk": None}

    def on_inputs(hidden, position_embeddings, mask):
        q, k, _ = _qkv(model, step.module, hidden, position_embeddings)
        k = k.repeat_interleave(H // G, dim=1)
        qk = (q * k).abs().mean(dim=(0, 2)).double()  # (H, hd)
        acc["qk"] = qk if acc["qk"] is None else acc["qk"] + qk

    def on_o_input(x):
        x = x.reshape(-1, x.shape[-1]).double()
        acc["gram"] = x.T @ x if acc["gram"] is None else acc["gram"].addmm_(x.T, x)

    _hook_attention(step, model, on_inputs, on_o_input)
    return acc["gram"], acc["qk"]


# --- attention decisions ------------------------------------------------------------------
def head_width(keep: int, heads: int, head_dim: int, align: int = 1) -> int:
    """keep / heads rounded to an even number (the code), or to a multiple of ``align``."""
    unit = math.lcm(2, max(align, 1))
    return min(head_dim, max(unit, int(round(keep / heads / unit) * unit)))


def choose_heads(gram: torch.Tensor, w_o: torch.Tensor, ratio: float, num_heads: int,
                 head_dim: int, align: int = 1) -> tuple[list[int], int]:
    """Deleted heads and the width w every other head keeps (step 1 of the docstring)."""
    H, hd = num_heads, head_dim
    channels = H * hd
    keep = channels - round(channels * ratio)
    channel_score = (w_o.detach().double() ** 2 * torch.diagonal(gram)).sum(0)
    top = channel_score.topk(keep).indices
    kept_per_head = torch.bincount(top // hd, minlength=H)
    blocks = torch.stack([gram[h * hd:(h + 1) * hd, h * hd:(h + 1) * hd] for h in range(H)])
    eig = torch.linalg.eigvalsh(blocks).flip(-1)  # (H, hd), descending
    score = eig / eig.sum(-1, keepdim=True) * channel_score.view(H, hd).sum(1, keepdim=True)
    head_score = score.sum(1)

    def retained(deleted: list[int], width: int) -> float:
        return float(sum(score[h, :width].sum() for h in range(H) if h not in deleted))

    start = int(keep / H)
    deleted = [h for h in range(H) if kept_per_head[h] < start // 4]
    remain = [h for h in range(H) if h not in deleted]
    width = int(keep / len(remain))
    best = retained(deleted, width)

    def weakest() -> int:
        return remain[int(torch.argmin(head_score[remain]))]

    for i in range(H):  # the code walks head indices, but always tries the weakest head
        if i not in remain or len(remain) == 1:
            continue
        candidate, k_now = weakest(), int(keep / (len(remain) - 1))
        if k_now > hd:
            continue
        gain = retained(deleted + [candidate], k_now)
        if gain > best:
            deleted.append(candidate)
            remain.remove(candidate)
            best, width = gain, k_now
    if width < WIDTH_FLOOR * hd:  # a floor on the width: delete heads until it holds
        for i in range(H):
            if i not in remain or len(remain) == 1:
                continue
            k_now = int(keep / (len(remain) - 1))
            if k_now > hd:
                continue
            candidate = weakest()
            deleted.append(candidate)
            remain.remove(candidate)
            width = k_now
            if width >= WIDTH_FLOOR * hd:
                break
    return sorted(deleted), head_width(keep, len(remain), hd, align)


def choose_pairs(qk: torch.Tensor, deleted: list[int], num_kv_heads: int, width: int) -> dict[int, torch.Tensor]:
    """Kept RoPE frequency pairs (sorted) per KV group that still has a head (step 2)."""
    H, hd = qk.shape
    per = H // num_kv_heads
    pairs = {}
    for g in range(num_kv_heads):
        heads = [h for h in range(g * per, (g + 1) * per) if h not in deleted]
        if not heads:
            continue
        s = qk[heads].sum(0)
        s = s[: hd // 2] + s[hd // 2:]
        pairs[g] = s.topk(min(width // 2, hd // 2)).indices.sort().values
    return pairs


@torch.no_grad()
def recomputed_grams(step: BlockStep, model: ModelAdapter, deleted: list[int],
                     dims: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """RᵀR and RᵀX: R the attention output with sliced Q/K and deleted heads zeroed, X the
    dense o_proj input, both (tokens × H·hd), float64 (step 3)."""
    H, G, hd = model.num_heads, model.num_kv_heads, model.head_dim
    per = H // G
    keep_dim = torch.zeros(G, hd, dtype=torch.bool)
    for g, d in dims.items():
        keep_dim[g, d.cpu()] = True
    acc = {"R": None, "RR": None, "RX": None}

    def on_inputs(hidden, position_embeddings, mask):
        q, k, v = _qkv(model, step.module, hidden, position_embeddings)
        kd = keep_dim.to(q.device)
        k = k * kd[None, :, None, :]
        q = q * kd.repeat_interleave(per, 0)[None, :, None, :]
        k, v = k.repeat_interleave(per, dim=1), v.repeat_interleave(per, dim=1)
        out = _attend(q, k, v, mask)
        out[:, deleted] = 0
        acc["R"] = out.transpose(1, 2).reshape(-1, H * hd).double()

    def on_o_input(x):
        r, x = acc["R"], x.reshape(-1, x.shape[-1]).double()
        acc["RR"] = r.T @ r if acc["RR"] is None else acc["RR"].addmm_(r.T, r)
        acc["RX"] = r.T @ x if acc["RX"] is None else acc["RX"].addmm_(r.T, x)

    _hook_attention(step, model, on_inputs, on_o_input)
    return acc["RR"], acc["RX"]


def value_bases(RR: torch.Tensor, deleted: list[int], groups: list[int], num_heads: int,
                num_kv_heads: int, head_dim: int, width: int) -> dict[int, torch.Tensor]:
    """Per kept KV group, the top-``width`` eigenvectors of its kept heads' summed Gram."""
    per, hd = num_heads // num_kv_heads, head_dim
    bases = {}
    for g in groups:
        heads = [h for h in range(g * per, (g + 1) * per) if h not in deleted]
        gram = sum(RR[h * hd:(h + 1) * hd, h * hd:(h + 1) * hd] for h in heads)
        _, vectors = torch.linalg.eigh(gram)
        bases[g] = vectors.flip(-1)[:, :width]
    return bases


def refit_output(w_o: torch.Tensor, RR: torch.Tensor, RX: torch.Tensor, bases: dict[int, torch.Tensor],
                 heads: list[int], per: int, head_dim: int) -> torch.Tensor:
    """W_o · XᵀZ (ZᵀZ + λI)⁻¹ with Z = R P, P the kept heads' bases (step 3)."""
    hd, channels = head_dim, RR.shape[0]
    if not heads:
        return w_o.new_zeros(w_o.shape[0], 0).double()
    P = RR.new_zeros(channels, len(heads) * bases[heads[0] // per].shape[1])
    w = P.shape[1] // len(heads)
    for i, h in enumerate(heads):
        P[h * hd:(h + 1) * hd, i * w:(i + 1) * w] = bases[h // per]
    ZZ, ZX = P.T @ RR @ P, P.T @ RX
    lam = DAMP * float(torch.diagonal(ZZ).sum()) / channels  # mean over all H·hd diagonal entries
    B = torch.linalg.solve(ZZ + lam * torch.eye(len(ZZ), dtype=ZZ.dtype, device=ZZ.device), ZX)
    return w_o.detach().double() @ B.T


@torch.no_grad()
def prune_attention(step: BlockStep, model: ModelAdapter, ratio: float, slice_qk: bool = True,
                    align: int = 1) -> dict:
    """Steps 1–3 on one block; returns what was kept."""
    H, G, hd = model.num_heads, model.num_kv_heads, model.head_dim
    per = H // G
    gram, qk = attention_scores(step, model)
    w_o = step.linears["o"].weight
    deleted, width = choose_heads(gram, w_o, ratio, H, hd, align)
    pairs = choose_pairs(qk, deleted, G, width)
    if not slice_qk:  # the -noqk ablation: every pair kept
        pairs = {g: torch.arange(hd // 2) for g in pairs}
    dims = {g: pair_dimensions(p.cpu(), hd) for g, p in pairs.items()}
    RR, RX = recomputed_grams(step, model, deleted, dims)
    groups = sorted(pairs)
    bases = value_bases(RR, deleted, groups, H, G, hd, width)
    heads = [h for h in range(H) if h not in deleted and h // per in bases]
    new_o = refit_output(w_o, RR, RX, bases, heads, per, hd)
    slice_attention(model, step.module, deleted, pairs if slice_qk else None, bases, new_o)
    return {"heads": heads, "groups": groups, "qk_dim": 2 * (width // 2) if slice_qk else hd, "v_dim": width,
            "pairs": {g: p.tolist() for g, p in pairs.items()} if slice_qk else None}


# --- MLP --------------------------------------------------------------------------------------
def mlp_keep(width: int, ratio: float, align: int = 1) -> int:
    """Neurons kept: round(F·ratio) dropped, rounded down to a multiple of 8 (the code);
    with ``align`` the kept count is then rounded to a multiple of it."""
    dropped = round(width * ratio)
    keep = width - (dropped - dropped % MLP_ALIGN)
    return keep if align <= 1 else min(width, max(align, align * round(keep / align)))


@torch.no_grad()
def prune_mlp(step: BlockStep, model: ModelAdapter, keep: int) -> None:
    """Step 4 on one block: keep ``keep`` neurons, refit down_proj."""
    down = step.linears["down"]
    if keep >= down.in_features:
        return
    gram = step.input_stats(["down"])["down"].gram
    lam = DAMP * float(torch.diagonal(gram).mean())
    gram = gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    W = down.weight.detach().double()
    score = (W ** 2 * torch.diagonal(gram)).sum(0)
    order = score.topk(len(score)).indices
    kept, dropped = order[:keep].sort().values, order[keep:]
    compensation = torch.linalg.solve(gram[kept][:, kept], gram[kept][:, dropped])  # Σ_SS⁻¹ Σ_SD
    slice_mlp(model, step.module, kept, W[:, kept] + W[:, dropped] @ compensation.T)


def _nonzeros(lin: nn.Linear) -> float:
    return float(torch.count_nonzero(lin.weight)) + (0 if lin.bias is None else float(torch.count_nonzero(lin.bias)))


# --- ratio accounting ---------------------------------------------------------------------------
def _densities(model: ModelAdapter, block: nn.Module) -> dict[str, float]:
    """Nonzero fraction of the weights that stay as they are when sliced (q, k, gate, up)."""
    out = {}
    for role, lin in model.linears(block).items():
        out[role] = float(torch.count_nonzero(lin.weight)) / lin.weight.numel()
    return out


def predicted_nonzeros(model: ModelAdapter, ratios: torch.Tensor, densities: list[dict[str, float]],
                       modules: tuple[str, ...], slice_qk: bool = True, align: int = 1) -> list[float]:
    """Per block: nonzeros of its linears after pruning at ``ratios`` without head deletion."""
    H, G, hd, d = model.num_heads, model.num_kv_heads, model.head_dim, model.hidden_size
    out = []
    for index, block in enumerate(model.blocks):
        linears, dens = model.linears(block), densities[index]
        width = linears["down"].in_features
        a, m = (float(x) for x in ratios[index])
        attention = sum(lin.weight.numel() * dens[r] for r, lin in linears.items() if r in ("q", "k", "v", "qkv", "o"))
        if "attention" in modules and a > 0:
            keep = H * hd - round(H * hd * a)
            w = head_width(keep, H, hd, align)
            qk_width = w if slice_qk else hd
            q_density, k_density = (dens["qkv"],) * 2 if "qkv" in dens else (dens["q"], dens["k"])
            q_k = (H * q_density + G * k_density) * qk_width * d  # kept rows keep their zeros
            attention = q_k + G * w * d + d * H * w  # folded V and refit O are dense
        mlp = sum(lin.weight.numel() * dens[r] for r, lin in linears.items() if r in model.arch.mlp_roles)
        if "mlp" in modules and m > 0:
            k = mlp_keep(width, m, align)
            inputs = sum(lin.weight.numel() * dens[r] for r, lin in linears.items() if r in model.arch.mlp_inputs)
            mlp = inputs * k / width + d * k
        out.append(attention + mlp)
    return out


class IntraSlice(Method):
    kind = "structured"
    patterns = ("unstructured",)
    native_knob = "sparsity"
    description = "IntraSlice (authors' code): heads + RoPE pairs + per-group VO PCA + MLP Nyström, Fisher allocation"
    knobs = {
        "sparsity": Knob(float, None, "the authors' --sparsity, reproduced as is (default: solved to match r)"),
        "bias": Knob(float, 1.0, "the authors' --global_bias: MLP share of the budget (1 = same ratio as attention)"),
        "align": Knob(int, 1, "head and MLP widths in multiples of this (ours; 8 keeps fp16 GEMMs fast)"),
        "kept": Knob(dict, None, "shape probes only: kept shapes per layer, from a run's report"),
    }

    def __init__(self, name: str = "intraslice", allocation: str = "global",
                 modules: tuple[str, ...] = ("attention", "mlp"), slice_qk: bool = True):
        self.name = name
        self.allocation = allocation
        self.modules = modules
        self.slice_qk = slice_qk
        self._gradients: dict = {}  # Fisher importance, by (model, calibration): reused across ratios
        if name != "intraslice":
            self.ablation_of = "intraslice"
            self.description = (f"IntraSlice ablation: allocation={allocation}, modules={'+'.join(modules)}"
                                + ("" if slice_qk else ", Q/K untouched"))

    def unsupported(self, arch):
        if "attention" in self.modules:
            if arch.attention_features:
                return (f"{self.name} replaces the attention module and does not implement what "
                        f"{arch.family} attention needs: {', '.join(arch.attention_features)} "
                        f"(intraslice-mlp compresses only the MLP and runs)")
            if self.slice_qk and arch.family == "phi2":
                return (f"{self.name} slices RoPE pairs, but {arch.family} rotates only part of each head "
                        f"(intraslice-noqk keeps Q/K whole and runs)")
            if self.slice_qk and arch.qk_norms:
                return (f"{self.name} slices RoPE pairs of Q/K, but {arch.family} normalises q and k over "
                        f"all head dimensions (intraslice-noqk keeps Q/K whole and runs)")
        return super().unsupported(arch)

    # --- allocation --------------------------------------------------------------------------
    def _importance(self, model: ModelAdapter, calibration):
        ids = calibration.input_ids
        key = (model.config.model_type, tuple(ids.shape), int(ids.sum()), int(ids[:, :7].prod(1).sum()),
               float(model.linears(model.blocks[0])["down"].weight.detach().double().sum()))
        if key not in self._gradients:
            heads, neurons = allocation.mask_gradients(model, calibration)
            self._gradients = {key: allocation.fisher_importance(model, heads, neurons)}
        return self._gradients[key]

    def ratios(self, model: ModelAdapter, importance, sparsity: float, bias: float) -> torch.Tensor:
        if self.allocation == "uniform":
            r = allocation.uniform_ratios(len(model.blocks), sparsity)
        else:
            r = allocation.global_ratios(model, *importance, sparsity, bias)
        if "attention" not in self.modules:
            r[:, 0] = 0
        if "mlp" not in self.modules:
            r[:, 1] = 0
        return r

    def solve_sparsity(self, model, importance, bias, target_ratio, densities, dense, align=1) -> float:
        """The authors' s whose predicted r (no head deletion) meets ``target_ratio``."""
        def r_of(s):
            return 1 - sum(predicted_nonzeros(model, self.ratios(model, importance, s, bias), densities,
                                              self.modules, self.slice_qk, align)) / dense
        lo, hi = 0.0, 0.99
        if r_of(hi) < target_ratio:
            raise ValueError(f"{self.name} reaches at most r = {r_of(hi):.3f} on this model "
                             f"(per-layer ratios are capped at {allocation.MAX_RATIO}); asked {target_ratio}")
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if r_of(mid) < target_ratio else (lo, mid)
        return hi

    # --- compression ------------------------------------------------------------------------
    def compress(self, model, calibration, target):
        self.require(model.arch)
        start = time.perf_counter()
        bias = float(self.option(target, "bias"))
        importance = None if self.allocation == "uniform" else self._importance(model, calibration)
        allocation_s = time.perf_counter() - start
        dense = count_parameters(model).blocks
        densities = [_densities(model, b) for b in model.blocks]
        sparsity, align = self.option(target, "sparsity"), int(self.option(target, "align"))
        matching = sparsity is None
        if matching:
            sparsity = self.solve_sparsity(model, importance, bias, target.ratio, densities, dense, align)
        ratios = self.ratios(model, importance, float(sparsity), bias)
        plan = predicted_nonzeros(model, ratios, densities, self.modules, self.slice_qk, align)
        budget = [p * (1 - target.ratio) * dense / sum(plan) for p in plan]  # per layer, sums to the goal
        report = CompressionReport(knobs={"sparsity": float(sparsity), "allocation": self.allocation,
                                          "bias": bias, "modules": list(self.modules),
                                          "slice_qk": self.slice_qk, "kept": {}})
        start = time.perf_counter()
        spent = 0.0
        for step in calibration.sequential(model, desc=f"{self.name}: prune"):
            i = step.index
            a, m = (float(x) for x in ratios[i])
            kept = {}
            if matching and "mlp" not in self.modules and a > 0:  # -vo: the attention absorbs the drift
                a = self._corrected_attention(model, step, a, sum(budget[:i]) - spent)
            if a > 0:
                kept.update(prune_attention(step, model, a, self.slice_qk, align))
            width = step.linears["down"].in_features
            k = mlp_keep(width, m, align) if m > 0 else width
            kept["mlp_planned"] = k
            if matching and "mlp" in self.modules and m > 0:
                k = self._corrected_width(model, step, sum(budget[: i + 1]) - spent, align)
            prune_mlp(step, model, k)
            kept["mlp"] = k
            spent += sum(_nonzeros(lin) for lin in model.linears(step.module).values())
            report.knobs["kept"][f"layers.{i}"] = kept
            report.layer_ratios[f"layers.{i}.attention"] = a
            report.layer_ratios[f"layers.{i}.mlp"] = 1 - k / width
        report.timings = {"allocation_s": allocation_s, "prune_s": time.perf_counter() - start}
        return report

    @staticmethod
    def _corrected_attention(model, step, ratio: float, allowance: float) -> float:
        """Attention ratio that gives back (or takes) the parameters the earlier layers'
        head deletions drifted by, at roughly (q + o + the group's share of k, v) per channel."""
        H, G, d = model.num_heads, model.num_kv_heads, model.hidden_size
        channels = H * model.head_dim
        per_channel = d * (2 + 2 * G / H)
        return min(allocation.MAX_RATIO, max(0.0, ratio - allowance / (channels * per_channel)))

    @staticmethod
    def _corrected_width(model, step, allowance: float, align: int = 1) -> int:
        """MLP width whose nonzeros fill what is left of the budget so far (the drift of the
        head deletions), dropped neurons still a multiple of 8 and at most 80 %."""
        linears = step.linears
        width, d = linears["down"].in_features, model.hidden_size
        rest = sum(_nonzeros(lin) for role, lin in linears.items() if role not in model.arch.mlp_roles)
        per_neuron = sum(_nonzeros(linears[r]) for r in model.arch.mlp_inputs) / width + d  # down: refit, dense
        dropped = MLP_ALIGN * round((width - (allowance - rest) / per_neuron) / MLP_ALIGN)
        most = MLP_ALIGN * int(allocation.MAX_RATIO * width / MLP_ALIGN)
        keep = width - min(max(dropped, 0), most)
        return keep if align <= 1 else min(width, max(align, align * round(keep / align)))

    @torch.no_grad()
    def shape_probe(self, model, target):
        """IntraSlice's shapes without data: uniform ratios (or ``kept`` from a run's report),
        every head kept, the first pairs, identity value bases, the first neurons."""
        H, G, hd = model.num_heads, model.num_kv_heads, model.head_dim
        kept = self.option(target, "kept")
        if kept is None:
            densities = [_densities(model, b) for b in model.blocks]
            align = int(self.option(target, "align"))
            uniform = IntraSlice(allocation="uniform", modules=self.modules, slice_qk=self.slice_qk)
            s = uniform.solve_sparsity(model, None, 1.0, target.ratio, densities, count_parameters(model).blocks,
                                       align)
            kept = {}
            for i, block in enumerate(model.blocks):
                a = s if "attention" in self.modules else 0
                m = s if "mlp" in self.modules else 0
                width = model.linears(block)["down"].in_features
                entry = {"mlp": mlp_keep(width, m, align) if m else width}
                if a:
                    w = head_width(H * hd - round(H * hd * a), H, hd, align)
                    entry.update(heads=list(range(H)), groups=list(range(G)), v_dim=w,
                                 qk_dim=2 * (w // 2) if self.slice_qk else hd,
                                 pairs={g: list(range(w // 2)) for g in range(G)} if self.slice_qk else None)
                kept[f"layers.{i}"] = entry
        for i, block in enumerate(model.blocks):
            entry = kept[f"layers.{i}"]
            if "heads" in entry:
                groups, heads, w = [int(g) for g in entry["groups"]], entry["heads"], entry["v_dim"]
                pairs = None if entry.get("pairs") is None else \
                    {int(g): torch.tensor(p) for g, p in entry["pairs"].items()}
                device = model.linears(block)["o"].weight.device
                bases = {g: torch.eye(hd, dtype=torch.float64, device=device)[:, :w] for g in groups}
                W_o = model.linears(block)["o"].weight.double()
                cols = torch.cat([h * hd + torch.arange(w, device=device) for h in heads]) if heads else \
                    torch.zeros(0, dtype=torch.long, device=device)
                deleted = [h for h in range(H) if h not in heads]
                slice_attention(model, block, deleted, pairs, bases, W_o[:, cols])
            width = model.linears(block)["down"].in_features
            k = entry["mlp"]
            if k < width:
                down = model.linears(block)["down"].weight
                slice_mlp(model, block, torch.arange(k, device=down.device), down[:, :k])
