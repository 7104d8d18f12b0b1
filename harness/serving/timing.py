"""Timing a serving step as a server sees it: compiled, captured as a CUDA graph, replayed.

``measure`` times one phase of a model (``harness.serving.step``) built as a ``ServingConfig``
says: torch.compile first (inductor fuses the small decode ops around the matrix products),
then one CUDA graph, each replay timed with CUDA events after warm-up; the median is reported.
On a CPU the same step runs eagerly under ``time.perf_counter`` and every figure says "cpu".
``measure_model`` times every phase, with q/k/v and gate/up fused as serving engines store them
(``harness.serving.fusion``) and 2:4 weights on sparse kernels (``harness.serving.sparse_kernels``):
unstructured sparsity runs dense kernels and is honestly ≈ 1.0× (the zeros are multiplied).

How far from the hardware: ``roofline`` compares a decode step with the time the device's
measured memory bandwidth needs to read its weights and cache; ``peak_fraction`` a prefill step
with the measured dense matrix-product rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time

import torch

from harness.models.adapters import ModelAdapter
from harness.serving import compilation, decode_kernels
from harness.serving.config import BASELINE, ServingConfig
from harness.serving.device import device_name
from harness.serving.fusion import (
    FusionError,
    check_one_product_per_step,
    fused_groups,
    fused_projections,
)
from harness.serving.quantized import QuantizedLinear, quantized_kernels
from harness.serving.sparse_kernels import to_semi_structured, tune_sparse_kernels
from harness.serving.step import (
    ServingStep,
    SpeedSpec,
    capture_graph,
    decode_read_bytes,
    step_flops,
    weight_bytes,
)


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
    a serving engine reaches; the compile time is recorded (``compile_s``). A step that fails to
    compile or to capture is timed as it is, and the result says why. ``profile`` adds
    ``profile_step``'s table of the compiled step (outside the CUDA graph, whose replay hides its
    kernels from the profiler).
    """
    compile = serving.compiles(device.type == "cuda")
    options = compilation.inductor_options(device, serving.inductor) if compile else {}
    elsewhere = _start_memory_count(adapter, device)
    repeats = repeats or (20 if spec.phase == "prefill" else 100)
    with torch.no_grad():
        for group in fused_groups(adapter.model):
            group.counting, group.products = True, 0
        step = ServingStep.for_spec(adapter, spec, device)  # a decode step's prompt fills the cache here
    # the timed step alone on the chosen kernels (flash refuses the prompt's mask)
    routes = compilation.kernel_routes(serving.decode_kernels, device, attention=serving.attention_kernel is None)
    with torch.no_grad(), compilation.attention_kernel(serving.attention_kernel), routes as chosen:
        step()  # allocates the cache (prefill) and checks the step runs
        fused = check_one_product_per_step(adapter.model, steps=2 if spec.phase == "decode" else 1)
        with _compiled(step, serving, options, compile) as (compiled, compile_s, compile_error):
            run, graph_error = _graphed(compiled, device) if device.type == "cuda" and cuda_graph else (compiled, None)
            times = sorted(time_steps(run, device, warmup, repeats))
            ops = profile_step(compiled, device) if profile else None
    seconds = statistics.median(times)
    result = {
        "phase": spec.phase, "batch": spec.batch, "length": spec.length,
        "tokens_per_s": spec.tokens_per_step / seconds, "step_ms": seconds * 1e3,
        "step_ms_p10": times[len(times) // 10] * 1e3, "step_ms_p90": times[(9 * len(times)) // 10] * 1e3,
        "repeats": repeats, "cuda_graph": run is not compiled, "compiled": compile and compile_error is None,
        "fused_groups": fused, "compile_mode": serving.compile_mode if compile else None,
        "compile_scope": serving.compile_scope if compile else None,
        "inductor_options": dict(options) or None, "compile_s": compile_s,
        "attention_kernel": serving.attention_kernel,
        "decode_kernels": serving.decode_kernels if device.type == "cuda" else "torch",
        # each one-row product shape's and single-query attention shape's kernel (serving.decode_kernels)
        "gemv_kernels": dict(chosen["products"]) if chosen and chosen["products"] else None,
        "attention_kernels": dict(chosen["attention"]) if chosen and chosen["attention"] else None,
        "weights_bytes": weight_bytes(adapter.model), "decode_read_bytes": decode_read_bytes(adapter),
        "kv_cache_bytes": step.cache.nbytes(), "flops": step_flops(adapter, spec),
        "peak_bytes": _peak_bytes(device, elsewhere), "device": device_name(device),
        **({"profile": ops} if ops is not None else {}),
        **({"cuda_graph_error": graph_error} if graph_error else {}),
        **({"compile_error": compile_error} if compile_error else {}),
    }
    del step, run
    return result


def _start_memory_count(adapter: ModelAdapter, device: torch.device) -> int | None:
    """Start counting the peak: reset it, and return what sits on the device besides the measured
    model (a dense model kept beside a compressed one, say), which its peak leaves out."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    decode_kernels.PEAK_BEFORE_TIMING.pop(_gpu_index(device), None)
    return max(0, torch.cuda.memory_allocated(device) - weight_bytes(adapter.model))


def _peak_bytes(device: torch.device, elsewhere: int | None) -> int | None:
    """The measured model's own peak: weights, cache, activations, workspace (and the decode
    kernels' timing, which ran before the counter's last reset)."""
    if device.type != "cuda":
        return None
    peak = max(torch.cuda.max_memory_allocated(device), decode_kernels.PEAK_BEFORE_TIMING.get(_gpu_index(device), 0))
    return peak - elsewhere


def _gpu_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def _compiled(step: ServingStep, serving: ServingConfig, options: dict, compile: bool):
    """Yields (the step to time, compile seconds, compile error): compiled by inductor as
    ``serving`` says and run once (the compile), or the eager step when not compiling or when
    compilation fails (the error is reported, the step still measured)."""
    if not compile:
        yield step, None, None
        return
    with contextlib.ExitStack() as stack:
        try:
            start = time.perf_counter()
            compiled = stack.enter_context(compilation.compiled_step(step, serving.compile_mode,
                                                                     serving.compile_scope, options))
            compiled()
            outcome = compiled, time.perf_counter() - start, None
        except Exception as error:  # report it and measure the eager step
            stack.close()
            outcome = step, None, f"{type(error).__name__}: {error}"[:300]
        yield outcome


def _graphed(step, device: torch.device):
    """(the step's CUDA-graph replay, None), or (the step, why it cannot be captured)."""
    try:
        return capture_graph(step), None
    except Exception as error:  # an op that cannot be captured: time it eagerly, say so
        torch.cuda.synchronize(device)
        return step, f"{type(error).__name__}: {error}"[:300]


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
    weights = result.get("decode_read_bytes", result["weights_bytes"])  # a row without it: every weight
    return (weights + result["kv_cache_bytes"]) / bandwidth / (result["step_ms"] / 1e3)

def measure_model(adapter: ModelAdapter, pattern: str, specs: list[SpeedSpec], device: torch.device,
                  serving: ServingConfig = BASELINE, profile: bool = False) -> dict[str, dict]:
    """Every spec's throughput of a model on ``device``, its shared-input linears fused as a
    serving engine stores them (``harness.serving.fusion``, unless ``serving.fuse`` is off); a 2:4 model
    moves to sparse kernels first (unless ``serving.sparse_kernels`` is off); for each spec, quantized
    linears go to the low-bit kernel that serves them at its token count (``quantized_kernels``,
    unless ``serving.quant_kernels`` is off), and back afterwards.

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
        quantized = serving.quant_kernels and device.type == "cuda" and any(
            isinstance(m, QuantizedLinear) for m in adapter.model.modules())
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
                with (quantized_kernels(adapter.model, spec.tokens_per_step, adapter.dtype) if quantized
                      else contextlib.nullcontext(None)) as quant:
                    results[spec.label] = {**measure(adapter, spec, device, serving, profile=profile),
                                           "sparse_kernels": spec_kernels, "serving": serving.to_dict(),
                                           **({"quant_kernels": quant} if quant else {})}
            return results
        except FusionError as error:  # measure unfused rather than triple a product
            failure = str(error)
    results = measure_model(adapter, pattern, specs, device, dataclasses.replace(serving, fuse=False), profile)
    return {label: {**result, "fusion_error": failure} for label, result in results.items()}
