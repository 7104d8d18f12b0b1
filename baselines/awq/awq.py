"""AWQ: scale salient input channels up before rounding, then search each group's clipping range.

Paper: "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration"
(Lin et al., MLSys 2024). Reference code: mit-han-lab/llm-awq (``awq/quantize``: ``run_awq``,
``auto_scale``, ``auto_clip``, ``quantizer.pseudo_quantize_tensor``).

Per block, on the calibration inputs of the full-precision model:

1. **Scale search.** For each group of linears that read one input, with the module whose
   output the search watches (the reference's ``module2inspect``):
   input norm → q, k, v (watch the attention), v → o (only where v's and o's weights have one
   shape: multi-head attention without GQA), post-attention norm → gate, up (watch the MLP),
   up → down (watch down). With x̄_j the mean |x_j| of input channel j over all calibration
   tokens, for α on the grid 0, 1/20, …, 19/20:

       s = x̄^α (clamped at 1e-4),  s /= √(max s · min s)
       loss(α) = mean ‖f(x; Q(W·diag s)·diag s⁻¹) − f(x; W)‖²

   and the best s is folded in: W·diag(s) in the readers, the writer (norm weight, or v's or
   up's output rows) divided by s. The output is unchanged; only rounding sees the difference.
2. **Clip search.** For every linear but q and k (their product is hard to clip, the
   reference says), on 512 calibration tokens taken at an even stride: per output row and
   group, the clipping bound max|w|·(1 − i/20), i = 0 … 9, minimising the group's output error
   ‖x_g·(Q(clip(w_g)) − w_g)ᵀ‖² over those tokens.
3. **Rounding.** Every weight clipped and rounded on AWQ's grid (below).

AWQ's grid (``pseudo_quantize_tensor``), per row and group, without stretching the range to 0:
asymmetric s = max(max − min, 1e-5) / (2^b − 1), z = clamp(−round(min / s), 0, 2^b − 1);
symmetric s = max(max|w|, 1e-5) / (2^(b−1) − 1), codes in [−2^(b−1), 2^(b−1) − 1].

From the reference: the next block's inputs are this block's outputs before scaling and
clipping (the search always sees the full-precision model); all four scale searches run on the
original weights, then the scales are applied, then the clip search runs on the scaled weights
and scaled inputs; weights are rounded only after the last block. Ours: a last group narrower
than ``group_size`` (a width not divisible by it: SmolLM2's 576 at 128) is searched and rounded
on its own; the reference refuses such widths. Losses are summed over calibration batches,
then divided (the reference: one batch of all samples; the same mean).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from harness.method import CompressionReport, Knob, QuantizationMethod
from harness.quantization import Grid, quantized_linear


def awq_grid(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row of ``w`` (rows × columns of one group): AWQ's grid (module docstring)."""
    w = w.float()
    if grid.symmetric:
        scale = w.abs().amax(1).clamp(min=1e-5) / (2 ** (grid.bits - 1) - 1)
        return scale, torch.full_like(scale, 2 ** (grid.bits - 1))
    wmax, wmin = w.amax(1), w.amin(1)
    scale = (wmax - wmin).clamp(min=1e-5) / grid.maxq
    return scale, (-torch.round(wmin / scale)).clamp(0, grid.maxq)


def awq_codes(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scales, zeros) of ``w`` on AWQ's grid, per row and group."""
    step = grid.columns(w.shape[1])
    codes = torch.empty(w.shape, device=w.device)
    scales, zeros = [], []
    for start in range(0, w.shape[1], step):
        block = w[:, start:start + step].float()
        scale, zero = awq_grid(block, grid)
        # symmetric codes are signed around the middle zero point, as the reference's [−2^(b−1), 2^(b−1) − 1]
        low, high = (0, grid.maxq) if not grid.symmetric else (0, 2 ** grid.bits - 1)
        codes[:, start:start + step] = torch.clamp(torch.round(block / scale[:, None]) + zero[:, None], low, high)
        scales.append(scale)
        zeros.append(zero)
    return codes, torch.stack(scales, 1), torch.stack(zeros, 1)


def fake_quantize(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``w`` rounded on AWQ's grid and dequantised, in ``w``'s dtype."""
    codes, scales, zeros = awq_codes(w, grid)
    step = grid.columns(w.shape[1])
    groups = torch.arange(w.shape[1], device=w.device) // step
    return (scales[:, groups] * (codes - zeros[:, groups])).to(w.dtype)


class _Capture:
    """Inputs of the block's linears (all calibration tokens, per role) and the attention's
    call arguments (per batch), from one forward pass of the block."""

    def __init__(self, block: nn.Module, linears: dict[str, nn.Module], attention: nn.Module):
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.attention_calls: list[tuple[tuple, dict]] = []
        self.handles = [attention.register_forward_pre_hook(self._attention, with_kwargs=True)]
        seen = {}
        for role, linear in linears.items():
            if id(linear) in seen:
                continue
            seen[id(linear)] = role
            self.handles.append(linear.register_forward_pre_hook(
                lambda module, args, role=role: self.inputs.setdefault(role, []).append(args[0].detach())))

    def _attention(self, module, args, kwargs):
        self.attention_calls.append((args, dict(kwargs)))

    def remove(self):
        for handle in self.handles:
            handle.remove()


class AWQ(QuantizationMethod):
    name = "awq"
    description = "activation-aware per-channel scaling and clipping search (Lin et al. 2024)"
    #: The input norm is a scale-only RMSNorm these rows can divide (Gemma's (1 + w) and Phi-2's
    #: shared LayerNorm feeding attention and MLP are not the reference's cases).
    architectures = ("llama", "phi3")
    knobs = {**QuantizationMethod.knobs,
             "scale": Knob(bool, True, "search and fold per-channel scales (the reference's auto_scale)"),
             "clip": Knob(bool, True, "search per-group clipping bounds (the reference's mse_range)"),
             "n_grid": Knob(int, 20, "grid points of the scale exponent and of the clip shrink"),
             "max_shrink": Knob(float, 0.5, "largest fraction the clip search cuts off max|w|"),
             "clip_tokens": Knob(int, 512, "calibration tokens the clip search looks at")}
    variant_knobs = ("scale", "clip")

    def compress(self, model, calibration, target):
        grid = self.grid(target)
        options = {name: self.option(target, name) for name in self.knobs}
        report = CompressionReport(knobs=options)
        clips: dict[tuple[int, str], list[tuple[int, torch.Tensor]]] = {}
        search_s = 0.0
        for step in calibration.sequential(model, desc="awq"):
            start = time.perf_counter()
            block, linears = step.module, step.linears
            capture = _Capture(block, linears, model.attention(block))
            try:
                step.next_inputs = step.forward()  # the full-precision outputs feed the next block
            finally:
                capture.remove()
            features = {role: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]) for role, xs in capture.inputs.items()}
            if options["scale"]:
                for writer, readers, watch in self.scale_groups(model, block):
                    scales = self.search_scale(readers, watch, capture, features, grid, options["n_grid"], model, block)
                    self.fold(writer, [linears[r] for r in readers], scales)
                    for role in readers:
                        if role in features:
                            features[role] = features[role] / scales.to(features[role].dtype)
            if options["clip"]:
                for role, linear in linears.items():
                    if role in ("q", "k", "qkv"):
                        continue
                    x = features[self.feature_role(model, role, features)]
                    clips[(step.index, role)] = self.search_clip(linear.weight.data, x, grid, options)
            search_s += time.perf_counter() - start
        start = time.perf_counter()
        for index, block in enumerate(model.blocks):
            for role, linear in model.linears(block).items():
                weight = linear.weight.data
                nonzeros = int(torch.count_nonzero(weight))
                if (index, role) in clips:
                    weight = self.clipped(weight, clips[(index, role)])
                codes, scales, zeros = awq_codes(weight, grid)
                model.replace_linear(block, role, quantized_linear(linear, codes, scales, zeros, grid, nonzeros))
        report.timings = {"search_s": search_s, "quantize_s": time.perf_counter() - start}
        return report

    @staticmethod
    def feature_role(model, role: str, features: dict) -> str:
        """The role whose captured input ``role`` reads (q/k/v share one capture)."""
        if role in features:
            return role
        return next(leader for readers in model.arch.norm_readers.values() if role in readers
                    for leader in readers if leader in features)

    def scale_groups(self, model, block) -> list[tuple[tuple[str, nn.Module], list[str], str]]:
        """(writer, readers, watched) per group: the writer is ("norm", module) or ("rows", linear)."""
        arch, linears = model.arch, model.linears(block)
        groups = [(("norm", model.attention_norm(block)), list(arch.attention_inputs), "attention")]
        if "v" in linears and linears["v"].weight.shape == linears["o"].weight.shape:
            groups.append((("rows", linears["v"]), ["o"], "o"))
        groups.append((("norm", model.mlp_norm(block)), list(arch.mlp_inputs), "mlp"))
        up = "up" if "up" in linears else "gate_up"
        groups.append((("rows", linears[up]), ["down"], "down"))
        return groups

    @torch.no_grad()
    def search_scale(self, readers, watch, capture, features, grid, n_grid, model, block) -> torch.Tensor:
        linears = model.linears(block)
        x = features[self.feature_role(model, readers[0], features)]
        x_mean = x.abs().float().mean(0)

        def outputs() -> list[torch.Tensor]:
            if watch == "attention":
                return [model.attention(block)(*args, **kwargs)[0] for args, kwargs in capture.attention_calls]
            if watch == "mlp":
                return [model.mlp(block)(xs) for xs in capture.inputs[self.feature_role(model, model.arch.mlp_inputs[0], capture.inputs)]]
            return [linears[watch](x)]

        reference = outputs()
        saved = {r: linears[r].weight.data.clone() for r in readers}
        best, best_scales = float("inf"), None
        for i in range(n_grid):
            scales = x_mean.pow(i / n_grid).clamp(min=1e-4)
            scales = scales / (scales.max() * scales.min()).sqrt()
            for r in readers:
                w = saved[r] * scales.to(saved[r].dtype)
                linears[r].weight.data = fake_quantize(w, grid) / scales.to(w.dtype)
            total = sum(float((o.float() - ref.float()).pow(2).sum()) for o, ref in zip(outputs(), reference))
            loss = total / sum(ref.numel() for ref in reference)
            if loss < best:
                best, best_scales = loss, scales
            for r in readers:
                linears[r].weight.data = saved[r]
        return best_scales

    @staticmethod
    @torch.no_grad()
    def fold(writer: tuple[str, nn.Module], readers: list[nn.Module], scales: torch.Tensor) -> None:
        """W·diag(s) in the readers; the writer's output divided by s (the output is unchanged)."""
        kind, module = writer
        if kind == "norm":
            module.weight.div_(scales.to(module.weight.dtype))
            if getattr(module, "bias", None) is not None:
                module.bias.div_(scales.to(module.bias.dtype))
        else:  # the writer's last len(s) output rows (a stacked gate_up's up half)
            module.weight[-scales.numel():].div_(scales.to(module.weight.dtype)[:, None])
            if module.bias is not None:
                module.bias[-scales.numel():].div_(scales.to(module.bias.dtype))
        for linear in readers:
            linear.weight.mul_(scales.to(linear.weight.dtype)[None, :])

    @staticmethod
    @torch.no_grad()
    def search_clip(weight: torch.Tensor, x: torch.Tensor, grid: Grid, options: dict) -> list[tuple[int, torch.Tensor]]:
        """Per group (its first column, the best bound per row): module docstring, step 2."""
        n_grid, max_shrink = options["n_grid"], options["max_shrink"]
        x = x[0 :: max(1, x.shape[0] // options["clip_tokens"])].float()
        step = grid.columns(weight.shape[1])
        bounds = []
        for start in range(0, weight.shape[1], step):
            w = weight[:, start:start + step].float()
            xg = x[:, start:start + step]
            reference = xg @ w.T
            original = w.abs().amax(1)
            best_bound, best_err = original.clone(), torch.full_like(original, float("inf"))
            for i in range(int(max_shrink * n_grid)):
                bound = original * (1 - i / n_grid)
                clipped = torch.maximum(torch.minimum(w, bound[:, None]), -bound[:, None])
                err = ((xg @ fake_quantize(clipped, Grid(grid.bits, -1, grid.symmetric)).T) - reference).pow(2).mean(0)
                better = err < best_err
                best_err[better], best_bound[better] = err[better], bound[better]
            bounds.append((start, best_bound.cpu()))  # applied after the walk, where the weights lie
        return bounds

    @staticmethod
    def clipped(weight: torch.Tensor, bounds: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        out = weight.clone()
        ends = [start for start, _ in bounds[1:]] + [weight.shape[1]]
        for (start, bound), end in zip(bounds, ends):
            b = bound.to(weight.device, weight.dtype)[:, None]
            out[:, start:end] = torch.maximum(torch.minimum(out[:, start:end], b), -b)
        return out
