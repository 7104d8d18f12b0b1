"""Triton kernels for a decode step's one-row products and single-query attention, as serving
engines ship their own.

**One-row products.** At decode@1xL every linear multiplies one row x by its weight W:
y = x Wᵀ + b, pure memory traffic (W is read once, x and y are a few KB). cuBLAS runs the
narrower ones as split-K kernels with a separate reduction and leaves bandwidth unused.
``gemv`` gives each program ``BLOCK_N`` rows of W and streams them once along K: no reduction
kernel. ``benchmarks/kernels/decode_kernels_bench.py`` compares the two per product shape.

**Single-query attention.** SDPA runs one program per head at decode@1xL, too few to keep the
memory system busy on a large GPU. ``decode_attention`` splits each head's cache into ``SPLITS``
chunks (flash-decoding): each program keeps a running max, sum and weighted value sum over its
chunk (online softmax) and stores them; the chunk's program that finishes last, counted by an
atomic per head, merges the chunks: out = Σ_s e^(m_s − m) o_s / Σ_s e^(m_s − m) l_s. No second
kernel to launch. The kernel is latency-bound (each program's chain of DRAM round trips), so
short chunks on few warps suit it, and its K and V tiles are requested together (loading V after
the scores would add a round trip).

Programmatic dependent launch (Hopper and newer): both kernels are launched so that they may
start while the kernel before them still runs. The GEMV loads its first tile of W, which nothing
before it writes, and only then waits (``gdc_wait``) for x: the weight stream starts a launch and
a DRAM round trip earlier. Inductor's own kernels in the compiled step use the same mechanism
(``triton.enable_pdl``).

No one kernel wins everywhere: cuBLAS can be faster on narrow sliced shapes, the GEMV's best
tiles differ between products, and at several rows SDPA's kernels have heads enough. Each
product shape and each attention shape therefore runs on whichever of torch's kernel and a few
tile settings of ours computed it fastest when the shape was first seen (``fastest_kernel``,
``fastest_attention``), as an autotuning engine would. ``one_row_linear`` and
``single_query_attention`` are custom ops, opaque to inductor (which cannot launch a kernel with
PDL, nor fuse into one); ``routed()`` sends the eligible ``F.linear`` and
``F.scaled_dot_product_attention`` calls to them while a step is traced. Everything else
(prefill, batches > 1 row for products, masked attention, semi-structured sparse weights) stays
on torch's kernels.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from harness.serving import device
from harness.serving.step import capture_graph

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


#: The GEMV's tile settings (BLOCK_N, BLOCK_K, num_warps) timed on each new shape: between them
#: the best tiles of the 7B shape's products and of sliced models' (benchmarks/kernels/
#: decode_kernels_bench.py compares them), none best on all: products with few rows per SM
#: (o_proj, down_proj) want few rows per program, those with many (gate/up) fewer, longer tiles.
GEMV_CONFIGS = ((16, 256, 4), (8, 512, 4), (4, 512, 4), (8, 1024, 8))


def gemv_config(n: int, k: int, device: torch.device) -> tuple[int, int, int]:
    """The untimed tile setting (BLOCK_N, BLOCK_K, num_warps): Triton's interpreter on a CPU and
    a shape first seen inside a CUDA-graph capture. 16 × 256 on 4 warps where each SM gets 4–8
    16-row programs (q/k/v on the 7B shape), 8 × 512 otherwise (close to the best on the other
    7B products)."""
    per_sm = triton.cdiv(n, 16) / _sm_count(device)
    return (16, 256, 4) if 4 <= per_sm < 8 else (8, 512, 4)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """y = x Wᵀ + b for x of one row (any leading shape of size 1), on the Triton GEMV with tile
    setting ``config`` (default: ``gemv_config``'s)."""
    n, k = weight.shape
    y = x.new_empty(*x.shape[:-1], n)
    block_n, block_k, warps = config or gemv_config(n, k, x.device)
    block_k = min(block_k, triton.next_power_of_2(k))  # tiles narrow where K is short
    pdl = device.programmatic_launch(x.device)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0), HAS_BIAS=bias is not None,
        PDL=pdl, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, **({"launch_pdl": True} if pdl else {}))
    return y


def replay_ms(calls, replays: int = 20) -> float:
    """GPU ms of ``calls`` captured as one CUDA graph (no Python launch time in the figure), the
    mean of ``replays`` replays after one."""

    replay = capture_graph(calls, warmup=1)  # the warm-up compiles the Triton kernel, warms cuBLAS
    replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


#: The kernel each one-row product shape got, once timed: (N, K, dtype, bias, device) → the GEMV's
#: tile setting, or None for cuBLAS
TIMED: dict[tuple, tuple[int, int, int] | None] = {}
#: Per GPU index, the allocation peak that timing a shape reset (its weight copies are the timing's,
#: not the step's memory): a measurement's peak is the larger of this and torch's own.
PEAK_BEFORE_TIMING: dict[int, int] = {}


def kernel_name(config: tuple[int, int, int] | None) -> str:
    """How a row names a product's kernel: "cublas", or "triton" and the GEMV's tile setting
    (BLOCK_N x BLOCK_K, warps): "triton 8x512/4"."""
    return "cublas" if config is None else "triton {}x{}/{}".format(*config)


def _copies_beyond_l2(tensors: tuple[torch.Tensor, ...], calls: int = 8) -> list[tuple[torch.Tensor, ...]]:
    """Enough copies of ``tensors`` (the originals first) that calls cycling through them read
    from DRAM, as a step's layers do, not from L2 (at most 512: tiny test shapes fit in L2 any
    way), listed again until there are ``calls`` entries: one call of a weight as large as L2 is
    too short to time against its launch."""
    l2 = getattr(torch.cuda.get_device_properties(tensors[0].device), "L2_cache_size", 50 << 20)
    copies = min(512, -(-2 * l2 // sum(t.numel() * t.element_size() for t in tensors)))
    ring = [tensors] + [tuple(torch.randn_like(t) for t in tensors) for _ in range(copies - 1)]
    return ring * -(-calls // len(ring))


def _fastest(device: torch.device, calls: dict, copies: list) -> object:
    """The key of the fastest of ``calls`` (each a function running one choice over ``copies``,
    beyond L2; timed as a CUDA graph). The copies are the timing's, not the step's memory: they
    are dropped, the allocation peak is reset and the earlier one kept in ``PEAK_BEFORE_TIMING``."""
    peak = torch.cuda.max_memory_allocated(device)
    ms = {choice: replay_ms(run) for choice, run in calls.items()}
    copies.clear()
    torch.cuda.reset_peak_memory_stats(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    PEAK_BEFORE_TIMING[index] = max(PEAK_BEFORE_TIMING.get(index, 0), peak)
    return min(ms, key=ms.get)


def _untimed(device: torch.device) -> bool:
    """Off a GPU (Triton's interpreter) and inside a CUDA-graph capture nothing can be timed."""
    return device.type != "cuda" or torch.cuda.is_current_stream_capturing()


def fastest_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, int, int] | None:
    """The GEMV tile setting from ``GEMV_CONFIGS``, or None for cuBLAS: whichever computed this
    shape's product fastest when it was first seen (each captured in a CUDA graph, over enough
    copies of the weight to miss L2, as the step's products do). No one kernel wins on every
    shape (the GEMV beats cuBLAS's split-K kernels on the small products, cuBLAS is faster on
    some narrow sliced shapes, and the best tiles differ between products), so the baseline takes
    the fastest per shape, as an autotuning engine would. An untimed shape takes
    ``gemv_config``'s tiles; the speed measurement runs every step once before capturing it."""
    key = (*weight.shape, weight.dtype, bias is not None, x.device)
    if key not in TIMED:
        if _untimed(x.device):
            return gemv_config(*weight.shape, x.device)
        ring = [w for w, in _copies_beyond_l2((weight,))]
        calls = {None: lambda: [torch._C._nn.linear(x, w, bias) for w in ring]}
        for config in GEMV_CONFIGS:
            calls[config] = lambda config=config: [gemv(x, w, bias, config) for w in ring]
        TIMED[key] = _fastest(x.device, calls, ring)
    return TIMED[key]


if AVAILABLE:
    @triton.jit
    def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, part_o_ptr, part_m_ptr, part_l_ptr, count_ptr,
                          L, chunk, scale, heads, stride_qb, stride_qh, stride_kb, stride_kh, stride_kl,
                          stride_vb, stride_vh, stride_vl, GROUP: tl.constexpr, SPLITS: tl.constexpr,
                          SPLITS_P2: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr, DK_P2: tl.constexpr,
                          DV_P2: tl.constexpr, BLOCK_L: tl.constexpr, PDL: tl.constexpr):
        row, split = tl.program_id(0), tl.program_id(1)  # row = batch × query heads + head
        b, h = row // heads, row % heads
        kv = h // GROUP  # the key/value head a query head reads (grouped-query attention)
        # query/key and value head sizes may differ and need not be powers of two (sliced heads):
        # padded to one, masked
        dk, dv = tl.arange(0, DK_P2), tl.arange(0, DV_P2)
        in_k, in_v = dk < DK, dv < DV
        if PDL:  # q and the cache are the previous kernels' outputs
            tl.extra.cuda.gdc_wait()
        q = tl.load(q_ptr + b * stride_qb + h * stride_qh + dk, mask=in_k, other=0.0).to(tl.float32) * scale
        k_rows = k_ptr + b * stride_kb + kv * stride_kh
        v_rows = v_ptr + b * stride_vb + kv * stride_vh
        start = split * chunk
        end = tl.minimum(start + chunk, L)  # the host sizes chunks so that none is empty
        # the running max of the scores, their exp-sum, and the exp-weighted sum of the values
        m = tl.full((), -float("inf"), tl.float32)
        total = tl.zeros((), tl.float32)
        acc = tl.zeros([DV_P2], dtype=tl.float32)
        for l0 in range(start, end, BLOCK_L):
            pos = l0 + tl.arange(0, BLOCK_L)
            keep = pos < end
            # both tiles requested before either is used: one DRAM round trip, not two
            k = tl.load(k_rows + pos[:, None] * stride_kl + dk[None, :], mask=keep[:, None] & in_k[None, :], other=0.0)
            v = tl.load(v_rows + pos[:, None] * stride_vl + dv[None, :], mask=keep[:, None] & in_v[None, :], other=0.0)
            scores = tl.where(keep, tl.sum(k.to(tl.float32) * q[None, :], axis=1), -float("inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=0))
            p = tl.exp(scores - m_new)
            rescale = tl.exp(m - m_new)
            acc = acc * rescale + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            total = total * rescale + tl.sum(p, axis=0)
            m = m_new
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
        part = row * SPLITS + split
        tl.store(part_o_ptr + part * DV + dv, acc, mask=in_v)
        tl.store(part_m_ptr + part, m)
        tl.store(part_l_ptr + part, total)
        # every thread's stores before the count (the atomic is acquire-release at GPU scope), so
        # that the program counting last sees every chunk's partial sums
        tl.debug_barrier()
        if tl.atomic_add(count_ptr + row, 1) == SPLITS - 1:
            s = tl.arange(0, SPLITS_P2)
            parts = row * SPLITS + s
            # .cg: from L2, where the other programs' stores are (this SM's L1 may hold an older call's)
            m_s = tl.load(part_m_ptr + parts, mask=s < SPLITS, other=-float("inf"), cache_modifier=".cg")
            l_s = tl.load(part_l_ptr + parts, mask=s < SPLITS, other=0.0, cache_modifier=".cg")
            o_s = tl.load(part_o_ptr + parts[:, None] * DV + dv[None, :], mask=(s < SPLITS)[:, None] & in_v[None, :],
                          other=0.0, cache_modifier=".cg")
            weight = tl.exp(m_s - tl.max(m_s, axis=0))
            out = tl.sum(weight[:, None] * o_s, axis=0) / tl.sum(weight * l_s, axis=0)
            tl.store(o_ptr + row * DV + dv, out.to(o_ptr.dtype.element_ty), mask=in_v)
            tl.store(count_ptr + row, 0)  # ready for the next call


#: The attention kernel's settings (BLOCK_L, most SPLITS, num_warps) timed on each new shape:
#: short tiles on one or two warps, since the kernel is latency-bound (each program's chain of DRAM
#: round trips), not bandwidth-bound (benchmarks/kernels/decode_kernels_bench.py compares them).
ATTENTION_CONFIGS = ((16, 32, 1), (32, 16, 1), (64, 8, 1), (64, 8, 2))
#: Per device, the per-row counters the attention's programs count finished chunks in (each
#: call's last program resets its row's count to 0: allocated and zeroed once, never in a capture)
_COUNTS: dict[torch.device, torch.Tensor] = {}


def attention_splits(length: int, block_l: int, most: int) -> tuple[int, int]:
    """(splits, chunk): at most ``most`` chunks of a whole number of ``block_l`` positions
    covering ``length``, none empty."""
    chunk = triton.cdiv(triton.cdiv(length, min(most, triton.cdiv(length, block_l))), block_l) * block_l
    return triton.cdiv(length, chunk), chunk


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                     config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v for one query position: q (B, Hq, 1, D), k (B, Hkv, L, D) and v
    (B, Hkv, L, Dv) with Hq a multiple of Hkv (query head h reads key/value head h // (Hq / Hkv)),
    head sizes up to 256, not necessarily powers of two nor equal (sliced heads), the last
    dimensions contiguous; every position visible. Returns (B, Hq, 1, Dv). ``config``:
    (BLOCK_L, most SPLITS, num_warps), default the first of ``ATTENTION_CONFIGS``."""
    batch, heads, _, dim = q.shape
    length, v_dim = k.shape[2], v.shape[3]
    block_l, most, warps = config or ATTENTION_CONFIGS[0]
    splits, chunk = attention_splits(length, block_l, most)
    rows = batch * heads
    counts = _COUNTS.get(q.device)
    if counts is None or counts.numel() < rows:
        if q.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("decode_attention's counters are allocated outside a CUDA-graph capture: run the step once first")
        counts = _COUNTS[q.device] = torch.zeros(max(rows, 4096), dtype=torch.int32, device=q.device)
    out = q.new_empty(batch, heads, 1, v_dim)
    part_o = torch.empty(rows * splits, v_dim, dtype=torch.float32, device=q.device)
    part_m, part_l = torch.empty(2, rows * splits, dtype=torch.float32, device=q.device)
    pdl = device.programmatic_launch(q.device)
    _attention_kernel[(rows, splits)](
        q, k, v, out, part_o, part_m, part_l, counts, length, chunk, scale if scale is not None else dim**-0.5, heads,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        GROUP=heads // k.shape[1], SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits), DK=dim, DV=v_dim,
        DK_P2=triton.next_power_of_2(dim), DV_P2=triton.next_power_of_2(v_dim), BLOCK_L=block_l, PDL=pdl,
        num_warps=warps, **({"launch_pdl": True} if pdl else {}))
    return out


def attention_name(config: tuple[int, int, int] | None) -> str:
    """How a row names an attention kernel: "sdpa" (torch's choice), or "triton" and the setting
    (BLOCK_L x most SPLITS, warps): "triton 64x8/4"."""
    return "sdpa" if config is None else "triton {}x{}/{}".format(*config)


#: The kernel each single-query attention shape got, once timed: (q shape, k shape, value head size,
#: dtype, scale, device) → the attention kernel's setting, or None for SDPA
TIMED_ATTENTION: dict[tuple, tuple[int, int, int] | None] = {}


def fastest_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> tuple[int, int, int] | None:
    """The setting from ``ATTENTION_CONFIGS``, or None for torch's SDPA: whichever computed this
    shape fastest when it was first seen, over copies of the cache beyond L2 (as
    ``fastest_kernel`` for products). An untimed shape takes SDPA."""
    key = (*q.shape, *k.shape, v.shape[3], q.dtype, scale, q.device)
    if key not in TIMED_ATTENTION:
        if _untimed(q.device):
            return ATTENTION_CONFIGS[0] if q.device.type != "cuda" else None
        gqa = q.shape[1] != k.shape[1]
        ring = _copies_beyond_l2((k, v))
        calls = {None: lambda: [torch._C._nn.scaled_dot_product_attention(q, k_, v_, scale=scale, enable_gqa=gqa)
                                for k_, v_ in ring]}
        for config in ATTENTION_CONFIGS:
            calls[config] = lambda config=config: [decode_attention(q, k_, v_, scale, config) for k_, v_ in ring]
        TIMED_ATTENTION[key] = _fastest(q.device, calls, ring)
    return TIMED_ATTENTION[key]


#: The kernels the step being routed ran on: {"products": {"NxK": kernel}, "attention": {shape: kernel}}
_USED: dict[str, dict[str, str]] | None = None


if AVAILABLE:
    @torch.library.custom_op("harness::one_row_linear", mutates_args=())
    def one_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """y = x Wᵀ + b for x of one row, on the fastest of the GEMV's tiles and cuBLAS for W's shape."""
        config = fastest_kernel(x, weight, bias)
        if _USED is not None:
            _USED["products"][f"{weight.shape[0]}x{weight.shape[1]}"] = kernel_name(config)
        if config is not None:
            return gemv(x, weight, bias, config)
        return torch._C._nn.linear(x, weight, bias)  # torch's own (F.linear may be rerouted here)

    @one_row_linear.register_fake
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty(*x.shape[:-1], weight.shape[0])

    @torch.library.custom_op("harness::single_query_attention", mutates_args=())
    def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        """Attention of one query position over a whole cache, on the fastest of SDPA and the
        attention kernel's settings for its shape."""
        config = fastest_attention(q, k, v, scale)
        if _USED is not None:
            (batch, heads, _, dim), (kv_heads, length) = q.shape, k.shape[1:3]
            _USED["attention"][f"{batch}x{heads}/{kv_heads}x{length}x{dim}"] = attention_name(config)
        if config is not None:
            return decode_attention(q, k, v, scale, config)
        return torch._C._nn.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1])

    @single_query_attention.register_fake
    def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        return q.new_empty(*q.shape[:3], v.shape[3])


def takes_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``gemv`` computes this ``F.linear``: one row, a plain dense half-precision weight
    (a semi-structured sparse one keeps its own kernels), contiguous along K."""
    return (type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dim() == 2 and weight.stride(1) == 1
            and x.dtype == weight.dtype in (torch.float16, torch.bfloat16) and x.numel() == x.shape[-1]
            and x.is_contiguous() and x.device == weight.device
            and (bias is None or (type(bias) in (torch.Tensor, torch.nn.Parameter) and bias.is_contiguous())))


def takes_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask=None, dropout_p: float = 0.0,
                    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> bool:
    """Whether ``decode_attention`` computes this ``F.scaled_dot_product_attention``: one query
    position seeing every key (no mask, no dropout, not causal), half precision, a head size of
    8 to 256, query heads a multiple of key/value heads (and GQA asked for if they differ)."""
    if not (q.dim() == k.dim() == v.dim() == 4 and q.shape[2] == 1):
        return False
    (batch, heads, _, dim), (kv_batch, kv_heads, length, kv_dim) = q.shape, k.shape
    return (attn_mask is None and dropout_p == 0.0 and not is_causal and (scale is None or isinstance(scale, float))
            and batch == kv_batch and v.shape[:3] == k.shape[:3] and dim == kv_dim and 8 <= dim <= 256
            and 8 <= v.shape[3] <= 256
            and heads % kv_heads == 0 and (heads == kv_heads or enable_gqa) and length > 0
            and q.dtype == k.dtype == v.dtype in (torch.float16, torch.bfloat16) and q.device == k.device == v.device
            and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1)


@contextlib.contextmanager
def routed(attention: bool = True):
    """While inside, the ``F.linear`` calls ``takes_linear`` accepts run as ``one_row_linear``
    (the fastest of the GEMV's tiles and cuBLAS for their shape) and, with ``attention`` (off
    where SDPA's kernel is pinned), the ``F.scaled_dot_product_attention`` calls
    ``takes_attention`` accepts as ``single_query_attention``; the
    rest run as before. Yields {"products": {...}, "attention": {...}}, which fills as the step
    runs with each shape's kernel ("4096x11008": "triton 4x512/4", "1x32/32x512x128": "triton 64x8/4").

    Models reach both through the ``torch.nn.functional`` module (nn.Linear and transformers'
    attention do), so rebinding the names there reroutes every caller; torch.compile traces
    through the rebinding."""
    global _USED
    if not AVAILABLE:
        raise RuntimeError("the Triton kernels need the triton package (torch's CUDA builds install it); "
                           "--decode-kernels torch measures on torch's kernels instead")
    linear, sdpa = F.linear, F.scaled_dot_product_attention
    used = {"products": {}, "attention": {}}

    def routed_linear(input, weight, bias=None):
        if takes_linear(input, weight, bias):
            return one_row_linear(input, weight, bias)
        return linear(input, weight, bias)

    def routed_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False):
        if takes_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
            return single_query_attention(query, key, value, scale)
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                    scale=scale, enable_gqa=enable_gqa)

    F.linear, _USED = routed_linear, used
    if attention:
        F.scaled_dot_product_attention = routed_attention
    try:
        yield used
    finally:
        F.linear, F.scaled_dot_product_attention, _USED = linear, sdpa, None
