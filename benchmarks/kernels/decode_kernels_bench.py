"""harness.serving.decode_kernels' kernels against torch's on the Llama-2-7B decode shapes (GPU).

Prints, per product, GB/s read and the fraction of measured copy bandwidth for cuBLAS
(``torch.mm``) and for the Triton GEMV at several tile settings (the untimed default first),
launched plainly (no programmatic dependent launch: its gain is in overlapping the kernel
before, which a step has and this loop of independent products has not); then, per
single-query attention shape, the same for SDPA (torch's choice of kernel) and the split-KV
attention kernel at several settings. Every figure is 32 calls on 32 distinct weights or
caches (as the 32 blocks of a step; larger than L2 together) captured in one CUDA graph, the
mean of 20 replays (``harness.serving.decode_kernels.replay_ms``).

    python3 benchmarks/kernels/decode_kernels_bench.py [products] [attention]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
import triton

from harness.serving import decode_kernels as dk
from harness.serving.decode_kernels import replay_ms
from harness.serving.timing import memory_bandwidth

LAYERS = 32
PRODUCTS = {"q/k/v": (12288, 4096), "o_proj": (4096, 4096), "gate/up": (22016, 4096),
            "down_proj": (4096, 11008), "lm_head": (32000, 4096),
            # the r = 0.25 shapes of SliceGPT and IntraSlice (their rows' `gemv_kernels`), where the
            # step chose cuBLAS for some: where the GEMV's tile rule leaves bandwidth unused
            "SliceGPT q/k/v": (12288, 2752), "SliceGPT o_proj": (2752, 4096), "SliceGPT gate/up": (22016, 2752),
            "SliceGPT down_proj": (2752, 11008), "IntraSlice q/k/v": (9216, 4096), "IntraSlice o_proj": (4096, 3072),
            "IntraSlice gate/up": (16496, 4096), "IntraSlice down_proj": (4096, 8248)}
CONFIGS = [(8, 512, 4), (16, 256, 4), (4, 512, 4), (8, 1024, 8), (16, 1024, 8), (32, 1024, 8), (4, 256, 4),
           (4, 1024, 4), (2, 512, 4)]


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


#: (batch, query heads, key/value heads, cache length, head size)
ATTENTION = {"7B decode@1x512": (1, 32, 32, 512, 128), "7B decode@16x512": (16, 32, 32, 512, 128),
             "7B decode@1x4096": (1, 32, 32, 4096, 128), "Llama-3-8B decode@1x512 (GQA)": (1, 32, 8, 512, 128)}
ATTENTION_CONFIGS = [(64, 8, 4), (128, 4, 8), (32, 16, 2), (256, 4, 8), (32, 8, 2), (16, 16, 1)]


def bench_attention(name: str, shape: tuple, device: torch.device, bandwidth: float) -> None:
    batch, heads, kv_heads, length, dim = shape
    q = torch.randn(batch, heads, 1, dim, device=device, dtype=torch.float16)
    caches = [[torch.randn(batch, kv_heads, length, dim, device=device, dtype=torch.float16) for _ in range(2)]
              for _ in range(LAYERS)]
    reference = F.scaled_dot_product_attention(q.float(), *(t.float() for t in caches[0]), enable_gqa=heads != kv_heads)
    rows = [("SDPA", lambda: [F.scaled_dot_product_attention(q, k, v, enable_gqa=heads != kv_heads) for k, v in caches])]
    configs = list(dk.ATTENTION_CONFIGS) + [c for c in ATTENTION_CONFIGS if c not in dk.ATTENTION_CONFIGS]
    for config in configs:
        error = (dk.decode_attention(q, *caches[0], None, config).float() - reference).abs().max().item()
        splits, _ = dk.attention_splits(length, config[0], config[1])
        timed = " (timed)" if config in dk.ATTENTION_CONFIGS else ""
        label = f"triton {dk.attention_name(config)[7:]}{timed}, {splits} splits, err {error:.1e}"
        rows.append((label, lambda config=config: [dk.decode_attention(q, k, v, None, config) for k, v in caches]))
    read = 2 * batch * kv_heads * length * dim * 2
    for label, calls in rows:
        us = replay_ms(calls) * 1e3 / LAYERS
        rate = read / (us * 1e-6)
        print(f"| {name} | {shape} | {label} | {us:.2f} | {rate / 1e9:.0f} | {rate / bandwidth:.1%} |")
    caches.clear()
    torch.cuda.empty_cache()


def main() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    parts = sys.argv[1:] or ["products", "attention"]
    bandwidth = memory_bandwidth(device)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, triton {triton.__version__}; "
          f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    if "products" in parts:
        print("\n| product | N x K | kernel | µs per call | GB/s | of copy bandwidth |\n|---|---|---|---|---|---|")
        for name, (n, k) in PRODUCTS.items():
            bench_product(name, n, k, device, bandwidth)
    if "attention" in parts:
        print("\n| attention | (B, Hq, Hkv, L, D) | kernel | µs per call | GB/s (cache) | of copy bandwidth |"
              "\n|---|---|---|---|---|---|")
        for name, shape in ATTENTION.items():
            bench_attention(name, shape, device, bandwidth)

if __name__ == "__main__":
    main()
