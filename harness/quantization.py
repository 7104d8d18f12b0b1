"""Weight quantization grids, shared by every quantization method.

A grid maps a weight to integer codes q ∈ [0, 2^b − 1] with one scale s and one integer zero
point z per output row and group of input columns (``harness.serving.quantized``):

    q = clamp(round(w / s) + z, 0, 2^b − 1)        ŵ = s · (q − z)

``minmax_grid`` is GPTQ's quantizer (IST-DASLab/gptq ``quant.Quantizer``, weight mode, no MSE
search): the range of each row-group is stretched to include 0, so that 0 is exactly
representable, then

    asymmetric: s = (max − min) / (2^b − 1)      z = round(−min / s)
    symmetric:  s = 2·max|w| / (2^b − 1)         z = 2^(b−1)        (the reference's (maxq + 1)/2)

and a row-group of zeros gets the range [−1, 1]. AWQ brings its own grid (``baselines.awq``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.serving.quantized import QuantizedLinear


@dataclass(frozen=True)
class Grid:
    """What a quantization run asks for: bits, columns per group (−1: one group per row),
    symmetric or not. ``label`` names it in tables: ``w4g128``, ``w8`` (per row), ``…s`` symmetric."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must lie in [2, 8], got {self.bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise ValueError(f"group_size must be positive or -1 (one group per row), got {self.group_size}")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    @property
    def label(self) -> str:
        return f"w{self.bits}" + (f"g{self.group_size}" if self.group_size > 0 else "") + ("s" if self.symmetric else "")

    @property
    def options(self) -> dict:
        """The knobs of a quantization method that select this grid."""
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}

    def columns(self, in_features: int) -> int:
        return in_features if self.group_size <= 0 else self.group_size

    def bits_per_weight(self, in_features: int) -> float:
        """Stored bits per weight: the code, plus the group's scale (and zero point) in half precision."""
        return self.bits + 16 * (1 if self.symmetric else 2) / self.columns(in_features)


def minmax_grid(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row of ``w`` (rows × columns of one group), GPTQ's quantizer."""
    w = w.float()
    zero = torch.zeros(w.shape[0], device=w.device)
    wmin, wmax = torch.minimum(w.min(1).values, zero), torch.maximum(w.max(1).values, zero)
    if grid.symmetric:
        wmax = torch.maximum(wmin.abs(), wmax)
        wmin = torch.where(wmin < 0, -wmax, wmin)
    empty = (wmin == 0) & (wmax == 0)
    wmin, wmax = torch.where(empty, -1.0, wmin), torch.where(empty, 1.0, wmax)
    scale = (wmax - wmin) / grid.maxq
    zero = torch.full_like(scale, (grid.maxq + 1) / 2) if grid.symmetric else torch.round(-wmin / scale)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Codes of ``w`` (rows × columns) on the grid (scale, zero), one value per row or per element."""
    scale, zero = scale.reshape(w.shape[0], -1), zero.reshape(w.shape[0], -1)
    return torch.clamp(torch.round(w.float() / scale) + zero, 0, maxq)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale.reshape(codes.shape[0], -1) * (codes - zero.reshape(codes.shape[0], -1))


def round_to_nearest(weight: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scales, zeros) of ``weight`` rounded to the nearest point of its row-groups' min-max
    grids; a last group narrower than ``group_size`` takes the columns left."""
    rows, cols = weight.shape
    step = grid.columns(cols)
    codes = torch.empty(rows, cols, device=weight.device)
    scales, zeros = [], []
    for start in range(0, cols, step):
        block = weight[:, start:start + step]
        scale, zero = minmax_grid(block, grid)
        codes[:, start:start + step] = quantize(block, scale, zero, grid.maxq)
        scales.append(scale)
        zeros.append(zero)
    return codes, torch.stack(scales, 1), torch.stack(zeros, 1)


def quantized_linear(linear: nn.Linear, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     grid: Grid, nonzeros: int, g_idx: torch.Tensor | None = None) -> QuantizedLinear:
    """The ``QuantizedLinear`` standing for ``linear`` (its bias kept, scales in its dtype).
    ``nonzeros``: its weight's nonzeros before quantizing (what r counts)."""
    return QuantizedLinear.from_codes(codes, scales.to(linear.weight.dtype), zeros, grid.bits,
                                      grid.group_size, grid.symmetric, linear.bias, nonzeros, g_idx)
