"""``magnitude``: prune the smallest |W| of each linear layer (no data).

Follows the magnitude baseline of the Wanda reference code (locuslab/wanda,
``prune_magnitude``): unstructured masks compare weights across the whole layer; N:M masks
compare within each group of M consecutive inputs of a row. No weight update.
"""

from harness import hookimpl
from harness.method import CompressionReport, Method
from harness.sparsity import prune_mask


class Magnitude(Method):
    name = "magnitude"
    kind = "unstructured"
    patterns = ("unstructured", "2:4", "4:8")
    needs_calibration = False
    description = "layer-wise |W| pruning, no calibration (Han et al. 2015; Wanda's baseline)"

    def compress(self, model, calibration, target):
        report = CompressionReport()
        for name, linear in model.named_linears():
            weight = linear.weight.data
            mask = prune_mask(weight.abs().float(), target.mask_sparsity(linear), target.n_m, per_row=False)
            weight[mask] = 0
            report.layer_ratios[name] = mask.float().mean().item()
        return report


@hookimpl
def register_methods(register):
    register(Magnitude())
