"""A Triton GEMV for a decode step's one-row products, as serving engines ship their own.

At decode@1xL every linear multiplies one row x by its weight W: y = x Wᵀ + b, pure memory
traffic (W is read once, x and y are a few KB). cuBLAS leaves bandwidth unused on the small
ones (H200, Llama-2-7B shape, 32 products of each in one CUDA graph,
leaderboards/gpu/decode_kernels_bench.py): o_proj (4096 × 4096) at 58 % of copy bandwidth and
down_proj (4096 × 11008) at 77 %, as split-K kernels with a separate reduction. The kernel here
gives each program ``BLOCK_N`` rows of W and streams them once along K (76 % and 92 % there; no
reduction kernel). (Holding the next tile in registers while multiplying the current one was
slower on every product: fewer programs fit on an SM.)

Programmatic dependent launch (Hopper and newer): the kernel is launched so that it may start
while the kernel before it (the norm or SwiGLU that computes x) still runs. It loads its first
tile of W, which nothing before it writes, and only then waits (``gdc_wait``) for x: the weight
stream starts a launch and a DRAM round trip earlier. Inductor's own kernels in the compiled
step use the same mechanism (``triton.enable_pdl``).

The GEMV does not win everywhere: cuBLAS was faster in the step on the 7B down_proj and on
several of IntraSlice's and SliceGPT's narrower shapes. ``one_row_linear`` therefore runs each
weight shape on whichever of the two computed it faster when the shape was first seen
(``faster_kernel``), as an autotuning engine would; ``gemv`` is the GEMV alone. ``one_row_linear``
is a custom op, opaque to inductor (which cannot launch a kernel with PDL, nor fuse into one);
``routed()`` sends the eligible ``F.linear`` calls to it while a step is traced: one row, a
dense fp16/bf16 weight. Everything else (prefill, batches > 1 row, semi-structured sparse
weights) stays on torch's kernels.

Tried and not kept: a split-KV (flash-decoding) Triton attention kernel for the single query,
9.8 µs per layer against cuDNN's 9.15 µs (decode@1x512: 8 MiB of cache per layer, 2 µs of
reading; the kernel is latency-bound either way), so SDPA keeps attention.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from harness import compilation

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: routed() refuses, nothing else here is used
    triton = None

AVAILABLE = triton is not None


def _sm_count(device: torch.device) -> int:  # (Triton's interpreter on a CPU: any count serves)
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


if AVAILABLE:
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_wn, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_K)
        w_rows = w_ptr + rows[:, None] * stride_wn
        w = tl.load(w_rows + cols[None, :], mask=(rows[:, None] < N) & (cols[None, :] < K), other=0.0)
        if PDL:  # the first tile is on its way; x is the previous kernel's output: wait for it
            tl.extra.cuda.gdc_wait()
        x = tl.load(x_ptr + cols, mask=cols < K, other=0.0)
        # a 2-D fp32 accumulator: one reduction across K at the end instead of one per tile
        acc = w.to(tl.float32) * x.to(tl.float32)[None, :]
        for k0 in range(BLOCK_K, K, BLOCK_K):
            x = tl.load(x_ptr + k0 + cols, mask=k0 + cols < K, other=0.0)
            w = tl.load(w_rows + (k0 + cols)[None, :], mask=(rows[:, None] < N) & (k0 + cols[None, :] < K), other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        if PDL:  # the next kernel may launch (its own gdc_wait holds it until this grid is done)
            tl.extra.cuda.gdc_launch_dependents()
        y = tl.sum(acc, axis=1)
        if HAS_BIAS:
            y += tl.load(b_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N)


def gemv_config(n: int, k: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps), by how many 16-row programs each SM gets. Few (o_proj,
    down_proj on the 7B shape: < 4 per SM): big tiles, 16 × 1024 on 8 warps, so that each
    program keeps many bytes in flight; many (q/k/v ~6, gate/up ~10, lm_head ~15): 4096-element
    tiles on 4 warps, occupancy supplying the bytes in flight. Each choice was the best of 10–11
    settings for its product in both runs of the kernel's loop (H200; 92–98 % of copy bandwidth,
    o_proj 76 %: calls 2 and 3 of leaderboards/gpu/runs/speed_llama-2-7b_h200_2026-12-04c.log).
    Tiles narrow where K is short."""
    per_sm = triton.cdiv(n, 16) / _sm_count(device)
    block_n, block_k, warps = (16, 1024, 8) if per_sm < 4 else (16, 256, 4) if per_sm < 8 else (8, 512, 4)
    block_k = min(block_k, triton.next_power_of_2(k))
    return block_n, block_k, warps


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x Wᵀ + b for x of one row (any leading shape of size 1), on the Triton GEMV."""
    n, k = weight.shape
    y = x.new_empty(*x.shape[:-1], n)
    block_n, block_k, warps = gemv_config(n, k, x.device)
    pdl = compilation.programmatic_launch(x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0), HAS_BIAS=bias is not None,
        PDL=pdl, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, **({"launch_pdl": True} if pdl else {}))
    return y


def replay_ms(calls, replays: int = 20) -> float:
    """GPU ms of ``calls`` captured as one CUDA graph (no Python launch time in the figure), the
    mean of ``replays`` replays after one."""
    from harness.throughput import capture_graph

    replay = capture_graph(calls, warmup=1)  # the warm-up compiles the Triton kernel, warms cuBLAS
    replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


#: The kernel each one-row product shape got, once timed: (N, K, dtype, bias, device) → "triton" | "cublas"
TIMED: dict[tuple, str] = {}
#: Per GPU index, the allocation peak that timing a shape reset (its weight copies are the timing's,
#: not the step's memory): a measurement's peak is the larger of this and torch's own.
PEAK_BEFORE_TIMING: dict[int, int] = {}


def faster_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """"triton" or "cublas": whichever computed this shape's product faster when it was first
    seen (both captured in a CUDA graph, over enough copies of the weight to miss L2, as the
    step's products do). The GEMV's tiles suit some shapes better than cuBLAS's kernels and
    some worse (H200: o_proj 76 % against 58 %, but narrower sliced shapes vary), so the
    baseline takes the faster per shape, as an autotuning engine would. Off a GPU (Triton's
    interpreter) and inside a CUDA-graph capture (nothing can be timed there) an untimed
    shape takes the GEMV; the speed measurement runs every step once before capturing it."""
    key = (*weight.shape, weight.dtype, bias is not None, x.device)
    if key not in TIMED:
        if x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return "triton"
        peak = torch.cuda.max_memory_allocated(x.device)
        l2 = getattr(torch.cuda.get_device_properties(x.device), "L2_cache_size", 50 << 20)
        copies = -(-2 * l2 // (weight.numel() * weight.element_size()))
        ring = [weight] if copies == 1 else list(torch.randn(copies, *weight.shape, device=x.device, dtype=weight.dtype))
        triton_ms = replay_ms(lambda: [gemv(x, w, bias) for w in ring])
        cublas_ms = replay_ms(lambda: [torch._C._nn.linear(x, w, bias) for w in ring])
        TIMED[key] = "triton" if triton_ms < cublas_ms else "cublas"
        del ring
        torch.cuda.reset_peak_memory_stats(x.device)
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        PEAK_BEFORE_TIMING[index] = max(PEAK_BEFORE_TIMING.get(index, 0), peak)
    return TIMED[key]


#: The kernels the products of the step being routed ran on: "NxK" → kernel (see ``routed``)
_USED: dict[str, str] | None = None


if AVAILABLE:
    @torch.library.custom_op("harness::one_row_linear", mutates_args=())
    def one_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """y = x Wᵀ + b for x of one row, on the faster of the GEMV and cuBLAS for W's shape."""
        kernel = faster_kernel(x, weight, bias)
        if _USED is not None:
            _USED[f"{weight.shape[0]}x{weight.shape[1]}"] = kernel
        if kernel == "triton":
            return gemv(x, weight, bias)
        return torch._C._nn.linear(x, weight, bias)  # torch's own (F.linear may be rerouted here)

    @one_row_linear.register_fake
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty(*x.shape[:-1], weight.shape[0])


def takes_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``gemv`` computes this ``F.linear``: one row, a plain dense half-precision weight
    (a semi-structured sparse one keeps its own kernels), contiguous along K."""
    return (type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dim() == 2 and weight.stride(1) == 1
            and x.dtype == weight.dtype in (torch.float16, torch.bfloat16) and x.numel() == x.shape[-1]
            and x.is_contiguous() and x.device == weight.device
            and (bias is None or (type(bias) in (torch.Tensor, torch.nn.Parameter) and bias.is_contiguous())))


@contextlib.contextmanager
def routed():
    """While inside, the ``F.linear`` calls ``takes_linear`` accepts run as ``one_row_linear``
    (the faster of the GEMV and cuBLAS for their shape); the rest run as before. Yields a dict
    that fills, as products run, with each product shape's kernel ("4096x11008": "triton").

    Models reach ``linear`` through the ``torch.nn.functional`` module (nn.Linear does), so
    rebinding the name there reroutes every caller; torch.compile traces through the rebinding."""
    global _USED
    if not AVAILABLE:
        raise RuntimeError("the Triton GEMV needs the triton package (torch's CUDA builds install it); "
                           "--decode-kernels torch measures on cuBLAS instead")
    linear, used = F.linear, {}

    def routed_linear(input, weight, bias=None):
        if takes_linear(input, weight, bias):
            return one_row_linear(input, weight, bias)
        return linear(input, weight, bias)

    F.linear, _USED = routed_linear, used
    try:
        yield used
    finally:
        F.linear, _USED = linear, None
