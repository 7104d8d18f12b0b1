"""Benchmarks (commands that print figures; never tests).

``harness bench compress`` times methods on a random-initialised model of a named shape
(harness/shapes.py) with a random calibration set of the requested size: total and
per-block seconds, and peak GPU memory. Speed depends on shapes, not on trained values.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from harness.calibration import Calibration, CalibrationSpec
from harness.method import Method
from harness.models.adapters import ModelAdapter
from harness.models.shapes import SHAPES, random_model
from harness.plugins import default_registry
from harness.serving.config import BASELINE, ServingConfig
from harness.serving.device import device_name
from harness.targets import Target, count_parameters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TimedCalibration(Calibration):
    """A calibration set that records how long each block takes (method + recompute)."""

    block_seconds: list[float] = field(default_factory=list)
    capture_seconds: float = 0.0

    def sequential(self, model, desc="blocks") -> Iterator:
        start = time.perf_counter()
        first = True
        for step in super().sequential(model, desc):
            _sync(self.device)
            now = time.perf_counter()
            if first:
                self.capture_seconds, first = now - start, False
            else:
                self.block_seconds.append(now - start)
            start = now
            yield step
        _sync(self.device)
        self.block_seconds.append(time.perf_counter() - start)


def bench_compress(shape: str, methods: list[str], n: int, length: int, pattern: str = "unstructured",
                   ratio: float = 0.5, layers: int | None = None, device: str = "cuda",
                   dtype: torch.dtype = torch.float16, batch_size: int = 8, log=print, on_rows=None) -> list[dict]:
    """Compression time of each method on a random model of ``shape`` (``n`` × ``length``
    calibration tokens, block by block). ``on_rows`` as in ``bench_speed``."""
    registry = default_registry()
    device = torch.device(device)
    full_layers = SHAPES[shape]["num_hidden_layers"]
    layers = layers or full_layers
    rows = []
    for name in methods:
        method = registry.method(name)
        model = random_model(shape, dtype, layers, init_device=device.type)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))
        calibration = TimedCalibration(ids, CalibrationSpec("random", n, length), "random tokens",
                                       device, batch_size)
        target = Target(0.5 if pattern != "unstructured" else ratio, pattern)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        method.compress(ModelAdapter(model), calibration, target)
        _sync(device)
        total = time.perf_counter() - start
        # a method that never walks the calibration blocks (magnitude) times as one piece
        per_block = calibration.block_seconds or [total / layers]
        # three phases, each extrapolated by what it scales with: capturing block 0's inputs (the
        # calibration set, not the depth), the block-by-block walk (median block × depth), and the
        # method's work outside that walk (IntraSlice's allocation pass over every block: depth)
        other = max(0.0, total - calibration.capture_seconds - sum(calibration.block_seconds))
        extrapolated = total if layers == full_layers else (
            calibration.capture_seconds + statistics.median(per_block) * full_layers + other * full_layers / layers)
        row = {
            "shape": shape, "method": name, "ratio": target.ratio,
            "pattern": "structured" if method.kind == "structured" else pattern,  # sliced, not masked
            "calibration": f"{n}x{length}", "blocks_run": layers, "blocks_full": full_layers,
            "total_s": total, "capture_s": calibration.capture_seconds, "outside_walk_s": other,
            "median_block_s": statistics.median(per_block), "max_block_s": max(per_block),
            "total_extrapolated_s": extrapolated,
            "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        }
        log(json.dumps(row))
        rows.append(row)
        if on_rows:
            on_rows(rows)
        del model, calibration
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_rows(rows: list[dict]) -> str:
    from tabulate import tabulate

    cols = ["shape", "method", "pattern", "calibration", "blocks_run", "total_s", "capture_s", "median_block_s",
            "outside_walk_s", "total_extrapolated_s", "peak_gpu_gib", "device"]
    return tabulate([[r.get(c) for c in cols] for r in rows], headers=cols, tablefmt="github", floatfmt=".2f")


# --- inference speed ------------------------------------------------------------------------
#: What a speed row keeps of its measurement as it is (``serving.timing.measure``'s result).
MEASURED_FIELDS = ("tokens_per_s", "step_ms", "cuda_graph", "compiled", "compile_mode", "compile_scope",
                   "inductor_options", "compile_s", "attention_kernel", "decode_kernels", "gemv_kernels",
                   "attention_kernels", "fused_groups", "device", "profile")


def speed_target(method: Method, pattern: str, ratio: float, options: dict | None = None) -> Target:
    """What a method is measured at: ``pattern`` where it produces N:M patterns, else ``ratio``
    (structured methods keep GPU-friendly widths, multiples of 8: their ``align`` option), with
    its knobs (``options``; a quantization method's grid)."""
    options = dict(options or {})
    if method.kind == "reference":
        return Target(0.0)
    if method.kind == "quantization":
        return Target(0.0, "unstructured", options)
    if pattern in method.patterns and pattern != "unstructured":
        return Target(0.5, pattern, options)
    return Target(ratio, "unstructured", {"align": 8, **options} if method.kind == "structured" else options)


def speed_row(shape: str, method: Method, target: Target, label: str, result: dict, dense: dict,
              ceilings: tuple[float | None, float | None], dtype: torch.dtype) -> dict:
    """One row of a speed table: the measurement as it is, its identity, and what the table derives
    from it (speedup over the same run's dense, GiB, roofline and peak fractions)."""
    from harness.serving.timing import peak_fraction, roofline

    bandwidth, peak = ceilings
    kernels = result.get("sparse_kernels") or {}
    pattern = method.setting_label(target) or ("structured" if method.kind == "structured" else target.pattern)
    return {"shape": shape, "method": method.name, "target": target.ratio, "ratio": result.get("ratio"),
            "pattern": pattern, "phase": label,
            "quant_kernels": (result.get("quant_kernels") or {}).get("routes"),
            "quant_candidates_ms": (result.get("quant_kernels") or {}).get("candidates_ms"),
            **{key: result[key] for key in MEASURED_FIELDS if key in result},
            "speedup": result["tokens_per_s"] / dense["tokens_per_s"],
            "weights_gib": result["weights_bytes"] / 2**30, "kv_gib": result["kv_cache_bytes"] / 2**30,
            "peak_gib": result["peak_bytes"] / 2**30 if result["peak_bytes"] else None,
            "roofline": roofline(result, bandwidth), "peak_frac": peak_fraction(result, peak),
            "sparse_kernels": kernels.get("converted"), "sparse_backend": kernels.get("backend"),
            "sparse_configs": kernels.get("configs"), "sparse_output_copy": kernels.get("output_copy"),
            "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
            "bandwidth_gbs": bandwidth / 1e9 if bandwidth else None, "peak_tflops": peak / 1e12 if peak else None}


def bench_speed(shape: str, methods: list[str], specs: list[str], ratio: float = 0.25,
                pattern: str = "2:4", device: str = "cuda", dtype: torch.dtype = torch.float16,
                layers: int | None = None, serving: ServingConfig = BASELINE, match: str | None = None,
                profile: bool = False, log=print, on_rows=None, options: dict | None = None) -> list[dict]:
    """Throughput of each method's shapes (``Method.shape_probe``) on a random model of ``shape``.

    Dense is measured in the same run; every speedup is a ratio of two measurements taken
    here, minutes apart, on the same device. Methods that support ``pattern`` (2:4, 4:8)
    run in it; the others at ``ratio``. With ``match="speedup:S"`` each method's ratio is
    searched until its speedup in the first spec's phase is S (``harness.run.speedmatch``).
    ``serving`` builds every measured step; ``profile`` adds each row's top kernels
    (``serving.timing.profile_step``). ``on_rows`` is called with the rows so far after each
    method's (the CLI writes its JSON there, so a run cut short keeps the rows it measured).
    """
    import copy

    from harness.run.speedmatch import SpeedTarget, match_speedup, probe_speed
    from harness.serving.step import SpeedSpec
    from harness.serving.timing import matmul_peak, measure_model, memory_bandwidth

    device, specs = torch.device(device), [SpeedSpec.parse(s) for s in specs]
    chosen = [default_registry().method(m) for m in methods]
    dense_model = random_model(shape, dtype, layers, init_device=device.type).to(device)
    dense_count = count_parameters(ModelAdapter(dense_model))
    ceilings = memory_bandwidth(device), matmul_peak(device, dtype)
    log(f"{shape}: {sum(p.numel() for p in dense_model.parameters()) / 1e9:.2f}B parameters, {dtype}, "
        f"{device_name(device)}; " + (f"copy bandwidth {ceilings[0] / 1e9:.0f} GB/s" if ceilings[0]
                                      else "no bandwidth figure on CPU"))
    dense = measure_model(ModelAdapter(dense_model), "unstructured", specs, device, serving, profile)
    goal = SpeedTarget.parse(match, specs[0].label) if match else None
    rows: list[dict] = []
    from harness.run.plan import stage_options

    options = options or {}
    for method in chosen:
        knobs = stage_options(method, options)
        method.check_options(knobs)
        target, extra = speed_target(method, pattern, ratio, knobs), {}
        if method.kind == "reference":
            if goal:
                continue
            results = {label: {**result, "ratio": 0.0} for label, result in dense.items()}
        else:
            if goal:
                found = match_speedup(method, speed_target(method, pattern, 0.0, knobs), goal,
                                      lambda: copy.deepcopy(dense_model), dense[goal.spec.label]["tokens_per_s"],
                                      device, serving, log)
                target = speed_target(method, pattern, found.ratio, knobs)
                extra = {"match": goal.label, "reached": found.reached, "probes": found.probes}
            measured, results = probe_speed(method, lambda: copy.deepcopy(dense_model), target, specs, device,
                                            serving, dense_count, profile)
            results = {label: {**result, "ratio": measured} for label, result in results.items()}
        for spec in specs:
            row = {**speed_row(shape, method, target, spec.label, results[spec.label], dense[spec.label],
                               ceilings, dtype), **extra}
            log(json.dumps({k: v for k, v in row.items() if k not in ("torch", "device", "dtype", "profile")},
                           default=str))
            rows.append(row)
        if on_rows:
            on_rows(rows)
    return rows


def speed_header(rows: list[dict]) -> str:
    """What every row of a speed table was measured against: device, software, the baseline's
    compile settings and the hardware ceilings that ``roofline`` and ``peak_frac`` divide by."""
    if not rows:
        return ""
    first = rows[0]

    def seen(key):  # the values a column takes, in order, once each (rows logged without it aside)
        return list(dict.fromkeys(str(r[key]) for r in rows if r.get(key) is not None))

    if first.get("compiled"):
        options = first.get("inductor_options")
        baseline = (f"torch.compile (inductor mode {first.get('compile_mode') or 'default'}, "
                    f"scope {first.get('compile_scope') or 'step'}"
                    + (f", {', '.join(f'{k}={v}' for k, v in options.items())}" if options else "") + ")")
    else:
        baseline = "eager blocks"
    if first.get("attention_kernel"):
        baseline += f", SDPA on {first['attention_kernel']}"
    if first.get("decode_kernels") == "triton":
        baseline += (", each one-row product and single-query attention shape on the fastest of torch's kernel "
                     "and harness.serving.decode_kernels' Triton kernels (rows `gemv_kernels`, `attention_kernels`)")
    baseline += ", then one CUDA graph per step" if first.get("cuda_graph") else ", no CUDA graph"
    if first.get("fused_groups"):
        baseline += "; q/k/v and gate/up fused as serving engines store them"
    where = ", ".join(filter(None, [", ".join(seen("device")), ", ".join(seen("dtype")),
                                    "torch " + ", ".join(seen("torch")) if seen("torch") else ""]))
    lines = [(f"{where}; e" if where else "E") + "very speedup is over dense measured in the same run.",
             f"Baseline: {baseline}."]
    if first.get("bandwidth_gbs") or first.get("peak_tflops"):
        # each run measures its own ceilings: rows from several runs list each value
        bandwidth, peak = (" / ".join(dict.fromkeys(f"{r.get(key) or 0:.0f}" for r in rows))
                           for key in ("bandwidth_gbs", "peak_tflops"))
        lines.append(f"Ceilings: copy bandwidth {bandwidth} GB/s (decode `roofline`), fp16 matmul peak {peak} "
                     "TFLOPS (prefill `peak_frac`), measured"
                     + (" by each run for its own rows." if " / " in bandwidth + peak else "."))
    if any(len(seen(key)) > 1 for key in ("compiled", "compile_scope", "inductor_options", "attention_kernel",
                                            "decode_kernels")):
        lines.append("Rows differ in their compile settings: see each row's compile columns.")
    return "\n".join(lines)


def format_speed_rows(rows: list[dict]) -> str:
    from tabulate import tabulate

    cols = ["method", "pattern", "ratio", "phase", "tokens_per_s", "speedup", "step_ms", "weights_gib",
            "kv_gib", "peak_gib", "roofline", "peak_frac", "compile_s", "sparse_kernels"]
    if any("match" in r for r in rows):
        cols[1:1] = ["match", "reached"]
    if any(r.get("quant_kernels") for r in rows):
        cols.append("quant_kernels")
    formats = [",.0f" if c == "tokens_per_s" else ".3g" for c in cols]  # 42,431 tok/s, not 4.24e+04
    table = tabulate([[r.get(c) for c in cols] for r in rows], headers=cols, tablefmt="github", floatfmt=formats)
    compile_s: dict[str, float] = {}  # what a user waits for: a method's compiles over every phase
    for r in rows:
        if r.get("compile_s"):
            compile_s[r["method"]] = compile_s.get(r["method"], 0.0) + r["compile_s"]
    if compile_s:
        table += "\n\ncompile s per method, all phases: " + ", ".join(f"{m} {s:.1f}" for m, s in compile_s.items())
    for r in rows:  # --profile: where each row's step time goes
        if r.get("profile"):
            ops = [[p["op"], p["ms_per_step"], p["share"], p["calls_per_step"]] for p in r["profile"]]
            table += (f"\n\n{r['method']} {r['pattern']} {r['phase']}: top kernels per step\n\n"
                      + tabulate(ops, headers=["kernel / op", "ms", "share", "calls"], tablefmt="github", floatfmt=".3g"))
    return table
