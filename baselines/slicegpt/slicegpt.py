"""SliceGPT: rotate the residual stream by its principal directions, then delete the least.

Paper: "SliceGPT: Compress Large Language Models by Deleting Rows and Columns" (Ashkboos,
Croci, do Nascimento, Hoefler, Hensman; ICLR 2024). Reference code:
microsoft/TransformerCompression (``rotate.py``, ``layernorm_fusion.py``).

1. Rotation invariance (exact). Every norm's scale (and bias) is folded into the linears
   that read it; a LayerNorm model (Phi-2) first has the mean subtraction baked into
   everything that writes the residual stream (embedding rows, the attention output and MLP down projections), so its
   LayerNorms become RMSNorms. The norms are then scale-free (``ShortcutRMSNorm``), and for
   any orthogonal Q, rotating the stream by Q and every adjacent weight by Q or Qᵀ leaves
   the function unchanged. The LM head is untied from the embeddings first.
2. PCA, block by block (sequential). For each signal that enters a norm, the covariance
   C = Σ xᵀx over calibration tokens (float64, + 1% of its mean diagonal, as the reference)
   is eigendecomposed; Q holds its eigenvectors by decreasing eigenvalue. The signal is
   rotated by Q and only its first d' coordinates are kept: readers lose input columns,
   writers lose output rows, and the embedding loses columns.
3. Shortcuts. Consecutive signals live in different bases, so each residual connection
   multiplies by Q_inᵀ Q_out (sliced): ``attn_shortcut`` (d'×d') and ``mlp_shortcut``
   (d'×d'). These are real parameters: "25% slicing" removes fewer than 25% of the
   blocks' parameters, and the harness counts them.

Choices from the reference where the paper is silent: the same d' everywhere
(``ConstSlicingScheduler``); d' = int((1 − s)·d) rounded down to a multiple of 8
(``round_interval``); the last block's output and the LM head are rotated but not sliced
(``do_slice_head`` off); calibration statistics of block l come from the already sliced
blocks < l. One deviation: the reference subtracts the embedding mean for every model;
that is exact only before LayerNorms, so we do it only for LayerNorm models (Phi-2) and
keep RMSNorm models (Llama family) exactly invariant.

Harness target: the measured ratio r. We solve for the integer d' whose analytic r
(shortcuts included) is nearest the target, and report the equivalent slicing fraction.
Option ``align=N`` restricts d' to multiples of N (the reference's ``round_interval``;
matched-speedup runs use 8, since fp16 GEMMs on other widths leave the fast kernels).
The native knob ``slicing`` (-o slicegpt.slicing=0.25) reproduces the paper's tables.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.calibration import BlockStep
from harness.method import CompressionReport, Knob, Method
from harness.models.adapters import ModelAdapter
from harness.targets import count_parameters

from .modules import ShortcutBlock, ShortcutRMSNorm

WRITERS = ("o", "down")  # linears whose outputs are added to the residual stream


def _eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _set_weight(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    dtype = linear.weight.dtype
    linear.weight = nn.Parameter(weight.to(dtype).contiguous(), requires_grad=False)
    linear.out_features, linear.in_features = weight.shape
    if bias is not None:
        linear.bias = nn.Parameter(bias.to(dtype).contiguous(), requires_grad=False)


def _fold_norm(norm: nn.Module, readers: list[nn.Linear]) -> None:
    """W ← W·diag(γ), b ← b + W·β: the norm's affine part moves into its readers."""
    gamma = norm.weight.detach().double()
    beta = norm.bias.detach().double() if getattr(norm, "bias", None) is not None else None
    for linear in readers:
        W = linear.weight.detach().double()
        bias = linear.bias.detach().double() if linear.bias is not None else None
        if beta is not None:
            bias = (bias if bias is not None else 0) + W @ beta
        _set_weight(linear, W * gamma[None, :], bias)


def _center_outputs(linear: nn.Linear) -> None:
    """Subtract the mean over output features: the writer now emits zero-mean vectors."""
    W = linear.weight.detach().double()
    bias = linear.bias.detach().double() if linear.bias is not None else None
    _set_weight(linear, W - W.mean(0, keepdim=True), None if bias is None else bias - bias.mean())


def make_rotation_invariant(model: ModelAdapter) -> None:
    """Step 1 of the module docstring: an exact change of parametrisation."""
    arch, width = model.arch, model.hidden_size
    layernorm = isinstance(model.final_norm, nn.LayerNorm)
    model.untie_embeddings()
    if layernorm:
        E = model.embeddings.weight.detach().double()
        model.embeddings.weight = nn.Parameter((E - E.mean(1, keepdim=True)).to(model.dtype), requires_grad=False)
    for index, block in enumerate(model.blocks):
        linears = model.linears(block)
        norms = model.norms(block)
        eps = _eps(next(iter(norms.values())))
        for path, readers in arch.norm_readers.items():
            _fold_norm(norms[path], [linears[r] for r in readers])
        if layernorm:
            for role in WRITERS:
                _center_outputs(linears[role])
        model.blocks[index] = ShortcutBlock(model, block, width, eps)
    _fold_norm(model.final_norm, [model.lm_head])
    model.set_final_norm(ShortcutRMSNorm(width, _eps(model.final_norm)))


@torch.no_grad()
def principal_directions(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of a float64 covariance, damped by 1% as the reference."""
    gram = gram.clone()
    gram.diagonal().add_(0.01 * gram.diagonal().mean())
    values, vectors = torch.linalg.eigh(gram)
    order = torch.argsort(values, descending=True)
    return values[order], vectors[:, order]


@torch.no_grad()
def signal_gram(step: BlockStep, module: nn.Module | None = None) -> torch.Tensor:
    """Σ xᵀx (float64) of the block's output, or of the input of ``module`` inside the block."""
    gram = None

    def add(x: torch.Tensor) -> None:
        nonlocal gram
        x = x.reshape(-1, x.shape[-1]).double()
        gram = x.T @ x if gram is None else gram.addmm_(x.T, x)

    if module is None:
        for out in step.forward():
            add(out)
    else:
        handle = module.register_forward_pre_hook(lambda m, args: add(args[0]))
        try:
            step.forward()
        finally:
            handle.remove()
    return gram


def rotate_inputs(linear: nn.Linear, Q: torch.Tensor) -> None:
    """W ← W Q: the linear now reads the rotated (and sliced) signal."""
    _set_weight(linear, linear.weight.double() @ Q)


def rotate_outputs(linear: nn.Linear, Q: torch.Tensor) -> None:
    """W ← Qᵀ W, b ← Qᵀ b: the linear now writes the rotated (and sliced) signal."""
    bias = Q.T @ linear.bias.double() if linear.bias is not None else None
    _set_weight(linear, Q.T @ linear.weight.double(), bias)


def analytic_block_parameters(model: ModelAdapter, width: int) -> int:
    """Parameters of all blocks once sliced to ``width`` (shortcuts included), before slicing."""
    arch, d = model.arch, model.hidden_size
    readers = {r for rs in arch.norm_readers.values() for r in rs}
    layernorm_bias = any(getattr(n, "bias", None) is not None for n in model.norms(model.blocks[0]).values())
    total, last = 0, len(model.blocks) - 1
    for index, block in enumerate(model.blocks):
        out_width = d if index == last else width  # the head is not sliced
        for role, linear in model.linears(block).items():
            has_bias = linear.bias is not None
            if role in readers:
                total += linear.out_features * width + (linear.out_features if has_bias or layernorm_bias else 0)
            else:  # writers
                w = out_width if (role == "down" or arch.parallel_block) else width
                total += w * linear.in_features + (w if has_bias else 0)
        total += width * out_width if arch.parallel_block else width * width + width * out_width
    return total


def width_for_ratio(model: ModelAdapter, ratio: float, align: int = 1) -> int:
    """The width (a multiple of ``align``) whose analytic ratio is nearest ``ratio``."""
    dense = count_parameters(model).blocks
    d = model.hidden_size
    return min(range(align, d + 1, align), key=lambda w: abs(1 - analytic_block_parameters(model, w) / dense - ratio))


def width_for_slicing(hidden: int, slicing: float, round_interval: int = 8) -> int:
    width = int((1 - slicing) * hidden)
    return width - width % round_interval


class SliceGPT(Method):
    name = "slicegpt"
    kind = "structured"
    patterns = ("unstructured",)
    native_knob = "slicing"
    description = "residual-stream PCA slicing with shortcut matrices (Ashkboos et al. 2024)"
    knobs = {
        "slicing": Knob(float, None, "the paper's slicing fraction (native: the ratio is then measured, not matched)"),
        "round_interval": Knob(int, 8, "with slicing: round the width down to a multiple of this (the reference's)"),
        "width": Knob(int, None, "an explicit sliced width (native, like slicing)"),
        "align": Knob(int, 1, "matched ratio: widths in multiples of this (8 keeps fp16 GEMMs fast)"),
    }

    def unsupported(self, arch):
        if arch.post_norms:
            return (f"slicegpt needs blocks whose residual stream can be rotated; {arch.family} normalises "
                    f"sublayer outputs before the residual add ({', '.join(arch.post_norms)}), and a norm "
                    "there does not commute with the rotation")
        return super().unsupported(arch)

    def width(self, model: ModelAdapter, target) -> int:
        d = model.hidden_size
        if "slicing" in target.options:
            width = width_for_slicing(d, float(target.options["slicing"]), self.option(target, "round_interval"))
        elif "width" in target.options:
            width = int(target.options["width"])
        else:
            # align=8 (or 64) gives GPU-friendly GEMM shapes; matched-speedup runs set it
            width = width_for_ratio(model, target.ratio, self.option(target, "align"))
        if not 0 < width <= d:
            raise ValueError(f"sliced width {width} outside (0, {d}]")
        return width

    def compress(self, model, calibration, target):
        self.require(model.arch)
        d = model.hidden_size
        width = self.width(model, target)
        report = CompressionReport(knobs={"width": width, "hidden_size": d, "slicing": 1 - width / d,
                                          "analytic_block_parameters": analytic_block_parameters(model, width)})
        make_rotation_invariant(model)
        parallel, last = model.arch.parallel_block, len(model.blocks) - 1
        attn_readers = model.arch.norm_readers[model.arch.attention_norm]
        mlp_readers = model.arch.norm_readers[model.arch.mlp_norm]
        Q = None
        for step in calibration.sequential(model, desc="slicegpt"):
            block, linears, device = step.module, step.linears, step.inputs[0].device
            if Q is None:  # rotate and slice the embedding, and block 0's captured inputs
                gram = sum(h.reshape(-1, d).double().T @ h.reshape(-1, d).double() for h in step.inputs)
                Q = principal_directions(gram)[1]
                Q_in = Q[:, :width]
                E = model.embeddings.weight.detach().to(device).double() @ Q_in
                model.embeddings.weight = nn.Parameter(E.to(model.dtype).cpu(), requires_grad=False)
                model.embeddings.embedding_dim = width
                step.inputs[:] = [(h.double() @ Q_in).to(h.dtype) for h in step.inputs]
            Q_in = Q[:, :width]
            out_width = d if step.index == last else width
            for role in attn_readers:  # in a parallel block these include the MLP's
                rotate_inputs(linears[role], Q_in)
            block.attn_shortcut = nn.Parameter(Q_in.T.to(model.dtype), requires_grad=False)
            if not parallel:
                Q_mid = principal_directions(signal_gram(step, model.mlp_norm(block)))[1][:, :width]
                block.attn_shortcut = nn.Parameter((Q_in.T @ Q_mid).to(model.dtype), requires_grad=False)
                rotate_outputs(linears["o"], Q_mid)
                for role in mlp_readers:
                    rotate_inputs(linears[role], Q_mid)
                block.mlp_shortcut = nn.Parameter(Q_mid.T.to(model.dtype), requires_grad=False)
            Q = principal_directions(signal_gram(step))[1]
            Q_out = Q[:, :out_width]
            if parallel:
                block.attn_shortcut = nn.Parameter((Q_in.T @ Q_out).to(model.dtype), requires_grad=False)
                rotate_outputs(linears["o"], Q_out)
            else:
                block.mlp_shortcut = nn.Parameter((Q_mid.T @ Q_out).to(model.dtype), requires_grad=False)
            rotate_outputs(linears["down"], Q_out)
            report.layer_ratios[f"layers.{step.index}"] = 1 - width / d
        head = model.lm_head
        _set_weight(head, head.weight.detach().to(Q.device).double() @ Q, head.bias.detach().to(Q.device) if head.bias is not None else None)
        head.to("cpu")
        return report

    @torch.no_grad()
    def shape_probe(self, model, target):
        """SliceGPT's shapes without data: slices of the weights as they are (Q = I), and
        shortcuts cut from one random orthogonal matrix, dense as real ones (r counts nonzeros)."""
        width, d = self.width(model, target), model.hidden_size
        make_rotation_invariant(model)
        arch, last = model.arch, len(model.blocks) - 1
        readers = {r for rs in arch.norm_readers.values() for r in rs}
        E = model.embeddings.weight
        model.embeddings.weight = nn.Parameter(E[:, :width].contiguous(), requires_grad=False)
        model.embeddings.embedding_dim = width
        Q_random = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
        for index, block in enumerate(model.blocks):
            out_width = d if index == last else width
            for role, linear in model.linears(block).items():
                W, b = linear.weight, linear.bias
                if role in readers:
                    _set_weight(linear, W[:, :width])
                else:  # writers: down (and Phi-2's o) write the block output, o the mid signal
                    rows = out_width if (role == "down" or arch.parallel_block) else width
                    _set_weight(linear, W[:rows], None if b is None else b[:rows])
            Q = Q_random[:width].to(E.device, E.dtype)
            block.attn_shortcut = nn.Parameter(Q[:, :out_width if arch.parallel_block else width].clone(),
                                               requires_grad=False)
            if not arch.parallel_block:
                block.mlp_shortcut = nn.Parameter(Q[:, :out_width].clone(), requires_grad=False)
