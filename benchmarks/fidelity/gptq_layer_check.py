"""One layer through the reference GPTQ and ours, on the same weight and inputs: are the codes
identical when both use the reference's float32 Hessian, and how far apart are they with ours
(float64 XᵀX, factorised in float64)?

    python benchmarks/fidelity/gptq_layer_check.py /tmp/gptq-ref/gptq   # a checkout of IST-DASLab/gptq

The reference code is imported from that directory at run time (never copied here).
"""

from __future__ import annotations

import sys

import torch

import baselines.gptq.gptq as ours
from harness.quantization import Grid


def float32_factor(gram: torch.Tensor, tokens: int, damp: float):
    """The reference's precision: the Hessian as given (float32), damped and factorised in float32."""
    H = gram.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    H[range(len(H)), range(len(H))] += damp * torch.mean(torch.diag(H))
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True), dead


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    torch.cuda.synchronize = lambda *args, **kwargs: None  # the reference times with it; CPU torch refuses it
    import gptq as reference
    from quant import Quantizer

    torch.manual_seed(0)
    rows, cols, group = 64, 576, 128
    weight = torch.randn(rows, cols)
    x = torch.randn(4096, cols) @ torch.randn(cols, cols) * 0.2 + torch.randn(cols)
    layer = torch.nn.Linear(cols, rows, bias=False)
    layer.weight.data = weight.clone()
    ref = reference.GPTQ(layer)
    ref.add_batch(x.reshape(8, 512, cols), None)
    hessian = ref.H.clone()
    ref.quantizer = Quantizer()
    ref.quantizer.configure(4, perchannel=True, sym=False, mse=False)
    ref.fasterquant(blocksize=128, percdamp=0.01, groupsize=group)
    expected = layer.weight.data
    groups = torch.arange(cols) // group

    def dequantized(gram, tokens):
        codes, scales, zeros, _ = ours.gptq_quantize(weight, gram, tokens, Grid(4, group))
        return scales[:, groups] * (codes - zeros[:, groups])

    ours_float64 = dequantized(x.double().T @ x.double(), len(x))
    ours.hessian_inverse_factor = float32_factor
    ours_float32 = dequantized(hessian, 2)
    print(f"reference's float32 Hessian: {(ours_float32 == expected).float().mean():.2%} of the weights identical")
    same = (ours_float64 == expected)
    first = int((~same).any(0).nonzero()[0]) if not same.all() else None
    print(f"our float64 statistics: {same.float().mean():.2%} identical; first differing column {first}")


if __name__ == "__main__":
    main()
