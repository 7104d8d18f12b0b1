"""``rtn``: round-to-nearest weight quantization, the baseline of every quantization paper."""

import time

import torch

from harness import hookimpl
from harness.method import CompressionReport, QuantizationMethod
from harness.quantization import quantized_linear, round_to_nearest


class RoundToNearest(QuantizationMethod):
    """Every block linear's weight rounded to the nearest point of its row-groups' min-max grid
    (``harness.quantization.minmax_grid``: GPTQ's quantizer, as GPTQ's paper and code run their
    RTN baseline, ``--nearest``). No data: the grid is the weights' own range."""

    name = "rtn"
    needs_calibration = False
    description = "round-to-nearest, per-group min-max grid (GPTQ's RTN baseline)"

    def compress(self, model, calibration, target):
        grid = self.grid(target)
        start = time.perf_counter()
        for block in model.blocks:
            for role, linear in model.linears(block).items():
                codes, scales, zeros = round_to_nearest(linear.weight.data, grid)
                nonzeros = int(torch.count_nonzero(linear.weight))
                model.replace_linear(block, role, quantized_linear(linear, codes, scales, zeros, grid, nonzeros))
        return CompressionReport(knobs={"bits": grid.bits, "group_size": grid.group_size, "symmetric": grid.symmetric},
                                 timings={"quantize_s": time.perf_counter() - start})


@hookimpl
def register_methods(register):
    register(RoundToNearest())
