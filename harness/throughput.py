"""Inference speed as a server sees it: fixed shapes, a static KV cache, CUDA graphs.

Two phases, each a ``SpeedSpec`` written ``PHASE@BxL``:

    prefill@8x2048   8 prompts of 2048 tokens in one forward (KV cache written):
                     tokens/s = B·L / step time
    decode@16x512    one new token for each of 16 sequences whose static KV cache holds
                     512 positions: tokens/s = B / step time

The step runs the model's own decoder blocks, one after another, on fixed-shape inputs:
a preallocated KV cache (``StaticKVCache``, written in place at positions held in a
device tensor) and a precomputed additive mask, so nothing in the step depends on
Python-side values. On a GPU the whole step is captured once as a CUDA graph and
replayed: no Python, no kernel-launch gaps, as in a serving engine. Each replay is timed
with CUDA events after warm-up; we report the median. On a CPU the same step runs eagerly
under ``time.perf_counter`` and every figure says "cpu".

Why decode at a fixed cache length: with a static cache, attention reads all L positions
(masked) at every step, so one step costs the same wherever in the cache it writes. Weights
and cache are read once per step; ``roofline`` compares a decode step with the time the
device's measured memory bandwidth needs to read them (the HBM roofline).

2:4 sparsity is faster only with sparse kernels: ``harness.sparse_kernels`` swaps every linear
whose weight is exactly 2:4 along its inputs for torch's semi-structured sparse tensor
(cuSPARSELt / CUTLASS), so N:M methods run their real kernels. Unstructured sparsity runs
dense kernels and is honestly ≈ 1.0× (the zeros are still multiplied).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import platform
import re
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from harness import compilation, decode_kernels, hookimpl
from harness.adapters import ModelAdapter
from harness.evaluation import EvalContext, EvalResult, Evaluator, Prepared
from harness.fusion import FusionError, check_one_product_per_step, fused_groups, fused_projections
from harness.serving_config import BASELINE, ServingConfig
from harness.sparse_kernels import to_semi_structured, tune_sparse_kernels


def device_name(device: torch.device) -> str:
    """The GPU's model ("NVIDIA H100 80GB HBM3"), or the CPU's architecture: where a speed was measured."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


@dataclass(frozen=True)
class SpeedSpec:
    phase: str  # "prefill" | "decode"
    batch: int
    length: int  # prompt tokens (prefill) or KV-cache positions (decode)

    @classmethod
    def parse(cls, text: str) -> SpeedSpec:
        match = re.fullmatch(r"(prefill|decode)@(\d+)x(\d+)", text.strip())
        if not match:
            raise ValueError(f"speed spec must be prefill@BxL or decode@BxL (e.g. decode@1x512), got {text!r}")
        spec = cls(match[1], int(match[2]), int(match[3]))
        if spec.batch < 1 or spec.length < 2:
            raise ValueError(f"speed spec {text!r}: batch ≥ 1 and length ≥ 2 needed")
        return spec

    @property
    def label(self) -> str:
        return f"{self.phase}@{self.batch}x{self.length}"

    @property
    def tokens_per_step(self) -> int:
        return self.batch * (self.length if self.phase == "prefill" else 1)


class StaticKVCache:
    """Keys and values of every layer, preallocated; written where ``positions`` says.

    transformers' attention modules call ``update(key, value, layer_idx, ...)`` and attend
    over what it returns: here, the whole preallocated buffer (masked beyond the written
    positions). ``positions`` is a device tensor set by the step that runs, so a captured
    graph writes wherever that tensor points. Buffers are allocated on the first call per
    layer, from the shapes the layer produces: narrow value heads (IntraSlice) get a
    narrow value cache.
    """

    def __init__(self, length: int):
        self.length = length
        self.positions: torch.Tensor | None = None
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx not in self.keys:
            B, H = key.shape[:2]
            self.keys[layer_idx] = key.new_zeros(B, H, self.length, key.shape[-1])
            self.values[layer_idx] = value.new_zeros(B, value.shape[1], self.length, value.shape[-1])
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.positions, key)
        values.index_copy_(2, self.positions, value)
        return keys, values

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor occupies; a semi-structured sparse one counts its packed values and metadata."""
    parts = [getattr(t, name) for name in ("packed", "meta") if getattr(t, name, None) is not None]
    if parts:
        return sum(p.numel() * p.element_size() for p in parts)
    return t.numel() * t.element_size()


def decode_read_bytes(adapter: ModelAdapter) -> int:
    """Weight bytes one decode step must read: every weight except the input embedding table,
    of which a step reads one row per token (unless the LM head shares it and reads it whole).
    With Llama-2-7B's untied 262 MB table, counting it would credit a decode step with 2 % more
    traffic than it has; with Qwen2.5-0.5B's, 28 %."""
    table = adapter.embeddings.weight
    head = adapter.lm_head.weight
    tied = head.data_ptr() == table.data_ptr()
    return weight_bytes(adapter.model) - (0 if tied else tensor_bytes(table))


def weight_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) not in seen:
            seen.add(id(p))
            total += tensor_bytes(p)
    return total


class ServingStep:
    """One fixed-shape forward of ``adapter``'s model: embeddings → blocks → last-token logits.

    ``batch`` sequences feed tokens at cache positions ``first .. first+tokens−1`` into a
    static cache of ``cache.length`` positions; the additive mask lets position i see
    positions ≤ i (and, in a sliding-window layer, only the last ``window`` of them). Each
    layer type gets its own mask and rotary table, as the model's own forward gives them.

    Where that mask says nothing SDPA cannot say itself, no mask is passed, as a serving
    engine passes none: a prefill from position 0 that fills the cache is plain causal
    attention (SDPA's ``is_causal``: the flash kernel, not a masked one reading an L×L
    mask), and a decode step that sees every cached position needs no mask at all. Only
    SDPA-style implementations get this (eager attention would then attend everywhere).
    """

    def __init__(self, adapter: ModelAdapter, batch: int, first: int, tokens: int,
                 cache: StaticKVCache, device: torch.device):
        self.adapter, self.cache = adapter, cache
        self.positions = torch.arange(first, first + tokens, device=device)
        generator = torch.Generator(device=device).manual_seed(first)
        self.input_ids = torch.randint(0, adapter.embeddings.num_embeddings, (batch, tokens),
                                       device=device, generator=generator)
        dtype, keys = adapter.dtype, torch.arange(cache.length, device=device)[None, :]
        implicit_masks = getattr(adapter.config, "_attn_implementation", None) in (
            "sdpa", "flash_attention_2", "flash_attention_3")
        causal = torch.ones(tokens, cache.length, dtype=torch.bool, device=device).tril()
        self.masks = {}
        for layer_type in set(adapter.layer_types):
            allowed = keys <= self.positions[:, None]
            if layer_type == "sliding_attention" and adapter.sliding_window:
                allowed &= keys > self.positions[:, None] - adapter.sliding_window
            if implicit_masks and ((tokens == 1 and bool(allowed.all())) or
                                   (first == 0 and tokens == cache.length and torch.equal(allowed, causal))):
                self.masks[layer_type] = None
                continue
            mask = torch.zeros(1, 1, tokens, cache.length, dtype=dtype, device=device)
            self.masks[layer_type] = mask.masked_fill_(~allowed, torch.finfo(dtype).min)

    @classmethod
    def for_spec(cls, adapter: ModelAdapter, spec: SpeedSpec, device: torch.device) -> ServingStep:
        cache = StaticKVCache(spec.length)
        if spec.phase == "prefill":
            return cls(adapter, spec.batch, 0, spec.length, cache, device)
        # decode: a prompt fills positions 0..L−2, the timed step writes position L−1
        prompt = cls(adapter, spec.batch, 0, spec.length - 1, cache, device)
        prompt()
        step = cls(adapter, spec.batch, spec.length - 1, 1, cache, device)
        step.prompt_ids = prompt.input_ids  # what the cache holds (tests compare with a full forward)
        return step

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        a = self.adapter
        self.cache.positions = self.positions
        hidden = a.embeddings(self.input_ids)
        position_ids = self.positions[None, :]
        shared = {"position_ids": position_ids, a.cache_keyword: self.cache, "use_cache": True,
                  "cache_position": self.positions}
        per_type = {t: {"attention_mask": mask, "position_embeddings": a.position_embeddings(hidden, position_ids, t)}
                    for t, mask in self.masks.items()}
        for block, layer_type in zip(a.blocks, a.layer_types):
            out = block(hidden, **shared, **per_type[layer_type])
            hidden = out[0] if isinstance(out, tuple) else out
        return a.logits(hidden[:, -1:])


def capture_graph(step, warmup: int = 3):
    """Warm ``step`` up on a side stream, then capture it as a CUDA graph; returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def time_steps(run, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``run``: CUDA events on a GPU, perf_counter on a CPU."""
    for _ in range(warmup):
        run()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            run()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return times


def profile_step(run, device: torch.device, steps: int = 3, top: int = 12) -> list[dict]:
    """Where one step's time goes: the ``top`` kernels (GPU) or operators' self time (CPU) by
    total time over ``steps`` calls of ``run``, each with its ms per step, share and calls."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        if cuda:
            torch.cuda.synchronize(device)
    timed = []
    for event in prof.key_averages():
        if cuda:  # kernels only (an operator's row would count its kernels again)
            if event.device_type != DeviceType.CUDA:
                continue
            us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        else:
            us = event.self_cpu_time_total
        if us > 0:
            timed.append((event.key, us, event.count))
    total = sum(us for _, us, _ in timed) or 1.0
    timed.sort(key=lambda row: -row[1])
    return [{"op": key[:120], "ms_per_step": us / 1e3 / steps, "share": us / total, "calls_per_step": count / steps}
            for key, us, count in timed[:top]]


def measure(adapter: ModelAdapter, spec: SpeedSpec, device: torch.device, serving: ServingConfig = BASELINE,
            repeats: int | None = None, warmup: int = 5, cuda_graph: bool = True, profile: bool = False) -> dict:
    """Throughput of one phase, the step built as ``serving`` says; the model must already sit on
    ``device`` in eval mode.

    Compiled (``serving.compiles``), the step runs through ``torch.compile`` (inductor fuses the
    small decode ops around the matrix products) before the CUDA graph is captured: the baseline
    a serving engine reaches; the compile time is recorded (``compile_s``). ``profile`` adds
    ``profile_step``'s table of the compiled step (outside the CUDA graph, whose replay hides its
    kernels from the profiler).
    """
    mode, scope = serving.compile_mode, serving.compile_scope
    options = compilation.inductor_options(device, serving.inductor)
    compile = serving.compiles(device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        gpu = device.index if device.index is not None else torch.cuda.current_device()
        decode_kernels.PEAK_BEFORE_TIMING.pop(gpu, None)
        # what else sits on the device (a dense model kept beside a compressed one, say): left out
        # of the peak, which is the measured model's alone (weights, cache, activations, workspace)
        elsewhere = max(0, torch.cuda.memory_allocated(device) - weight_bytes(adapter.model))
    repeats = repeats or (20 if spec.phase == "prefill" else 100)
    with torch.no_grad():
        for group in fused_groups(adapter.model):
            group.counting, group.products = True, 0
        step = ServingStep.for_spec(adapter, spec, device)  # a decode step's prompt fills the cache here
    # the timed step alone on the chosen kernels (flash refuses the prompt's mask)
    routes = compilation.decode_kernels(serving.decode_kernels, device, attention=serving.attention_kernel is None)
    with torch.no_grad(), compilation.attention_kernel(serving.attention_kernel), routes as chosen:
        step()  # allocates the cache (prefill) and checks the step runs
        fused = check_one_product_per_step(adapter.model, steps=2 if spec.phase == "decode" else 1)
        with contextlib.ExitStack() as stack:
            compiled, compile_error, compile_s = step, None, None
            if compile:
                try:
                    start = time.perf_counter()
                    compiled = stack.enter_context(compilation.compiled_step(step, mode, scope, options))
                    compiled()
                    compile_s = time.perf_counter() - start
                except Exception as error:  # report it and measure the eager step
                    stack.close()
                    compiled, compile_error = step, f"{type(error).__name__}: {error}"[:300]
            run, graphed, graph_error = compiled, False, None
            if device.type == "cuda" and cuda_graph:
                try:
                    run, graphed = capture_graph(compiled), True
                except Exception as error:  # an op that cannot be captured: time it eagerly, say so
                    graph_error = f"{type(error).__name__}: {error}"[:300]
                    torch.cuda.synchronize(device)
            times = time_steps(run, device, warmup, repeats)
            ops = profile_step(compiled, device) if profile else None
    seconds = statistics.median(times)
    result = {
        "phase": spec.phase, "batch": spec.batch, "length": spec.length,
        "tokens_per_s": spec.tokens_per_step / seconds, "step_ms": seconds * 1e3,
        "step_ms_p10": sorted(times)[len(times) // 10] * 1e3, "step_ms_p90": sorted(times)[(9 * len(times)) // 10] * 1e3,
        "repeats": repeats, "cuda_graph": graphed, "compiled": compile and compile_error is None, "fused_groups": fused,
        "compile_mode": mode if compile else None, "compile_scope": scope if compile else None,
        "inductor_options": dict(options) if compile and options else None, "compile_s": compile_s,
        "attention_kernel": serving.attention_kernel,
        "decode_kernels": serving.decode_kernels if device.type == "cuda" else "torch",
        # each one-row product shape's and single-query attention shape's kernel (harness.decode_kernels)
        "gemv_kernels": dict(chosen["products"]) if chosen and chosen["products"] else None,
        "attention_kernels": dict(chosen["attention"]) if chosen and chosen["attention"] else None,
        "weights_bytes": weight_bytes(adapter.model), "decode_read_bytes": decode_read_bytes(adapter),
        "kv_cache_bytes": step.cache.nbytes(), "flops": step_flops(adapter, spec),
        "peak_bytes": (max(torch.cuda.max_memory_allocated(device), decode_kernels.PEAK_BEFORE_TIMING.get(gpu, 0))
                       - elsewhere if device.type == "cuda" else None),
        "device": device_name(device),
    }
    if ops is not None:
        result["profile"] = ops
    if graph_error:
        result["cuda_graph_error"] = graph_error
    if compile_error:
        result["compile_error"] = compile_error
    del step, run
    return result


def memory_bandwidth(device: torch.device, gib: float = 1.0, repeats: int = 20) -> float | None:
    """Measured device-memory bandwidth in bytes/s (a copy reads and writes every byte)."""
    if device.type != "cuda":
        return None
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    seconds = statistics.median(time_steps(lambda: dst.copy_(src), device, 3, repeats))
    return 2 * n * 2 / seconds


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float16, n: int = 8192,
                repeats: int = 10) -> float | None:
    """Measured dense matrix-product rate in FLOP/s (n×n×n on random data), the prefill ceiling."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = statistics.median(time_steps(lambda: a @ b, device, 3, repeats))
    return 2 * n**3 / seconds


def step_flops(adapter: ModelAdapter, spec: SpeedSpec) -> float:
    """Matrix-product FLOPs of one step, counted dense-equivalent (a 2:4 linear counts its full
    shape, so its fraction of the dense peak shows what sparsity buys): every block linear
    on every token, plus causal attention (QKᵀ and AV) over the prompt in prefill."""
    linear = sum(2 * lin.in_features * lin.out_features for _, lin in adapter.named_linears())
    attention = 0.0
    if spec.phase == "prefill":  # half of the L×L score matrix is masked
        attention = len(adapter.blocks) * 2 * 2 * spec.batch * adapter.num_heads * adapter.head_dim * spec.length**2 / 2
    return spec.tokens_per_step * linear + attention


def peak_fraction(result: dict, peak: float | None) -> float | None:
    """Fraction of the measured matrix-product peak a prefill step reaches."""
    if peak is None or result["phase"] != "prefill" or not result.get("flops"):
        return None
    return result["flops"] / (result["step_ms"] / 1e3) / peak


def roofline(result: dict, bandwidth: float | None) -> float | None:
    """Fraction of the memory roofline a decode step reaches: (bytes it must read / bandwidth) /
    step time. It must read the weights (``decode_read_bytes``) and the whole KV cache."""
    if bandwidth is None or result["phase"] != "decode":
        return None
    weights = result.get("decode_read_bytes", result["weights_bytes"])  # rows measured before it existed
    return (weights + result["kv_cache_bytes"]) / bandwidth / (result["step_ms"] / 1e3)


def measure_model(adapter: ModelAdapter, pattern: str, specs: list[SpeedSpec], device: torch.device,
                  serving: ServingConfig = BASELINE, profile: bool = False) -> dict[str, dict]:
    """Every spec's throughput of a model on ``device``, its shared-input linears fused as a
    serving engine stores them (``harness.fusion``, unless ``serving.fuse`` is off); a 2:4 model
    moves to sparse kernels first (unless ``serving.sparse_kernels`` is off).

    The sparse conversion is one-way (semi-structured weights cannot go back to the CPU), so
    a 2:4 model is for measuring only afterwards; the fusion is undone on return. Before each
    spec, every sparse product gets cuSPARSELt's fastest configuration (algorithm, split-K) at that
    spec's token count (``tune_sparse_kernels``; the choice is in the result's ``sparse_kernels.configs``).
    """
    adapter.model.to(device)
    with fused_projections(adapter) if serving.fuse else contextlib.nullcontext([]):
        kernels = None
        if serving.sparse_kernels and pattern == "2:4" and device.type == "cuda":
            kernels = to_semi_structured(adapter, serving.sparse_backend, serving.sparse_transposed_output,
                                         serving.sparse_output_copy)
        try:
            results = {}
            for spec in specs:
                spec_kernels = kernels
                if kernels and kernels["converted"]:
                    try:
                        spec_kernels = {**kernels, "configs": tune_sparse_kernels(adapter, spec.tokens_per_step)}
                    except Exception as error:  # an optimisation: measure on the configurations as they are, say why
                        spec_kernels = {**kernels, "configs": None,
                                        "search_error": f"{type(error).__name__}: {error}"[:200]}
                results[spec.label] = {**measure(adapter, spec, device, serving, profile=profile),
                                       "sparse_kernels": spec_kernels, "serving": serving.to_dict()}
            return results
        except FusionError as error:  # measure unfused rather than triple a product
            failure = str(error)
    results = measure_model(adapter, pattern, specs, device, dataclasses.replace(serving, fuse=False), profile)
    return {label: {**result, "fusion_error": failure} for label, result in results.items()}


# --- the speed evaluation ----------------------------------------------------------------------
class DenseSpeed:
    """The dense model's throughput per spec, measured once, on first use, in this process:
    every speedup is a ratio measured side by side in one run."""

    def __init__(self, dense_model, specs: list[SpeedSpec], device: torch.device, serving: ServingConfig):
        self.dense_model, self.specs, self.device, self.serving = dense_model, specs, device, serving

    @functools.cached_property
    def results(self) -> dict[str, dict]:
        return measure_model(ModelAdapter(copy.deepcopy(self.dense_model())), "unstructured", self.specs,
                             self.device, self.serving)

    def tokens_per_s(self, label: str) -> float:
        return self.results[label]["tokens_per_s"]


class Speed(Evaluator):
    """``speed:PHASE@BxL[,...]``: tokens/s of each serving step, and the speedup over dense."""

    name = "speed"
    description = "throughput as a server sees it (static KV cache, CUDA graph) and speedup over dense"
    order = 100  # last: a 2:4 model moves to sparse kernels, one way
    metric_prefixes = ("speedup", "roofline", "peak")

    def describe(self, key: str, spec: dict, details: dict | None = None) -> str:
        return (f"{key} (tokens/s; speedup = ÷ dense measured in the same run"
                + (", 2:4 on sparse kernels" if spec.get("sparse_kernels") else "")
                + ("; roofline = fraction of the HBM roofline" if key.startswith("speed:decode")
                   else "; peak = fraction of the measured matmul peak") + ")")

    def notes(self, details: list[dict]) -> list[str]:
        dense = sorted({(label, round(phase["dense_tokens_per_s"])) for rows in details
                        for label, phase in rows.items() if phase.get("dense_tokens_per_s")})
        return ["dense, measured in the same run: " + "; ".join(f"{label} {tps:,} tokens/s" for label, tps in dense)
                ] if dense else []

    def plot_axis(self, metric: str) -> str | None:
        return "speedup" if metric.startswith("speedup:") else None

    def check(self, args: list[str], registry) -> None:
        for arg in args:
            SpeedSpec.parse(arg)

    def prepare(self, args: list[str], context: EvalContext) -> Prepared:
        specs = list(dict.fromkeys(SpeedSpec.parse(a) for a in args))
        serving = context.config.serving
        compile = serving.compiles(context.device.type == "cuda")
        if compile:
            compilation.use_compile_cache(context.config.cache_dir)
        # The spec is part of the record's identity and of its table's protocol: every serving
        # setting, the device, and "implicit_masks" (SDPA's causal kernel instead of explicit
        # masks where they say nothing more, ServingStep).
        settings = {**serving.to_dict(), "compile": compile}
        spec = {f"speed:{s.label}": {"batch": s.batch, "length": s.length, "implicit_masks": True,
                                     "device": device_name(context.device), **settings} for s in specs}
        return Prepared(spec, DenseSpeed(context.dense_model, specs, context.device, serving))

    def evaluate(self, prepared: Prepared, model: ModelAdapter, target, context: EvalContext) -> EvalResult:
        dense: DenseSpeed = prepared.state
        details = measure_model(model, target.pattern, dense.specs, context.device, dense.serving)
        bandwidth, peak = hardware_ceilings(str(context.device), model.dtype)
        metrics = {}
        for label, result in details.items():
            result["dense_tokens_per_s"] = dense.tokens_per_s(label)
            result["speedup"] = result["tokens_per_s"] / result["dense_tokens_per_s"]
            metrics[f"speed:{label}"] = result["tokens_per_s"]
            metrics[f"speedup:{label}"] = result["speedup"]
            # how far from the hardware: decode against the HBM roofline, prefill against the
            # measured matmul peak (GPU only: a CPU has no figure here)
            if (fraction := roofline(result, bandwidth)) is not None:
                result["roofline"] = metrics[f"roofline:{label}"] = fraction
            if (fraction := peak_fraction(result, peak)) is not None:
                result["peak_frac"] = metrics[f"peak:{label}"] = fraction
        return EvalResult(metrics, details)


@functools.cache
def hardware_ceilings(device: str, dtype: torch.dtype) -> tuple[float | None, float | None]:
    """(memory bandwidth B/s, matmul peak FLOP/s) of ``device``, measured once per process."""
    return memory_bandwidth(torch.device(device)), matmul_peak(torch.device(device), dtype)


@hookimpl
def register_evaluations(register):
    register(Speed())
