"""harness.decode_kernels' GEMV against cuBLAS on the Llama-2-7B decode@1x512 products (GPU).

Prints, per product, GB/s read and the fraction of measured copy bandwidth for cuBLAS
(``torch.mm``) and for the Triton GEMV at several tile settings (the default first), launched
plainly (no programmatic dependent launch: its gain is in overlapping the kernel before, which
a step has and this loop of independent products has not). Every figure is 32 calls on 32
distinct weights (as the 32 blocks of a step; larger than L2 together) captured in one CUDA
graph, the mean of 20 replays (``harness.decode_kernels.replay_ms``).

    python3 leaderboards/gpu/decode_kernels_bench.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton

from harness import decode_kernels as dk
from harness.decode_kernels import replay_ms
from harness.throughput import memory_bandwidth

LAYERS = 32
PRODUCTS = {"q/k/v": (12288, 4096), "o_proj": (4096, 4096), "gate/up": (22016, 4096),
            "down_proj": (4096, 11008), "lm_head": (32000, 4096),
            # the r = 0.25 shapes of SliceGPT and IntraSlice (their rows' `gemv_kernels`), where the
            # step chose cuBLAS for some: where the GEMV's tile rule leaves bandwidth unused
            "SliceGPT q/k/v": (12288, 2752), "SliceGPT o_proj": (2752, 4096), "SliceGPT gate/up": (22016, 2752),
            "SliceGPT down_proj": (2752, 11008), "IntraSlice q/k/v": (9216, 4096), "IntraSlice o_proj": (4096, 3072),
            "IntraSlice gate/up": (16496, 4096), "IntraSlice down_proj": (4096, 8248)}
CONFIGS = [(16, 1024, 8), (8, 512, 4), (16, 256, 4), (16, 512, 4), (32, 1024, 8), (16, 2048, 8), (8, 1024, 8),
           (16, 1024, 16), (32, 2048, 16), (4, 512, 4)]


def triton_gemv(x, w, out, config):
    n, k = w.shape
    block_n, block_k, warps = config
    dk._gemv_kernel[(triton.cdiv(n, block_n),)](x, w, w, out, n, k, w.stride(0), HAS_BIAS=False, PDL=False,
                                                BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)


def bench_product(name: str, n: int, k: int, device: torch.device, bandwidth: float) -> None:
    count = 8 if name == "lm_head" else LAYERS
    weights = [torch.randn(n, k, device=device, dtype=torch.float16) / k**0.5 for _ in range(count)]
    x = torch.randn(1, k, device=device, dtype=torch.float16)
    outs = [torch.empty(1, n, device=device, dtype=torch.float16) for _ in range(count)]
    reference = F.linear(x, weights[0])
    default = dk.gemv_config(n, k, device)
    configs = [default] + [c for c in CONFIGS if c != default]
    rows = [("cuBLAS", lambda: [torch.mm(x, w.t(), out=o) for w, o in zip(weights, outs)])]
    for config in configs:
        triton_gemv(x, weights[0], outs[0], config)
        error = (outs[0].float() - reference.float()).abs().max().item()
        label = f"triton {config}{' (default)' if config == default else ''} err {error:.1e}"
        rows.append((label, lambda config=config: [triton_gemv(x, w, o, config) for w, o in zip(weights, outs)]))
    for label, calls in rows:
        us = replay_ms(calls) * 1e3 / count
        rate = n * k * 2 / (us * 1e-6)
        print(f"| {name} | {n} x {k} | {label} | {us:.2f} | {rate / 1e9:.0f} | {rate / bandwidth:.1%} |")


def main() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    bandwidth = memory_bandwidth(device)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, triton {triton.__version__}; "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    print("\n| product | N x K | kernel | µs per call | GB/s | of copy bandwidth |\n|---|---|---|---|---|---|")
    for name, (n, k) in PRODUCTS.items():
        bench_product(name, n, k, device, bandwidth)

if __name__ == "__main__":
    main()
