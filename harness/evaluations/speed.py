"""The speed evaluation, ``speed:PHASE@BxL[,...]``: tokens/s of each serving step and the
speedup over the dense model, measured side by side in the same run (``harness.serving``).
The serving settings (``RunConfig.serving``) and the device are part of its spec, so rows
measured otherwise are never ranked together."""

from __future__ import annotations

import copy
import functools

import torch

from harness import hookimpl
from harness.evaluation import EvalContext, EvalResult, Evaluator, Prepared
from harness.models.adapters import ModelAdapter
from harness.serving import compilation
from harness.serving.config import ServingConfig
from harness.serving.device import device_name
from harness.serving.step import SpeedSpec
from harness.serving.timing import (
    matmul_peak,
    measure_model,
    memory_bandwidth,
    peak_fraction,
    roofline,
)


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
    order = 100  # last: a 2:4 model moves to sparse kernels, a quantized one to low-bit kernels, one way
    metric_prefixes = ("speedup", "roofline", "peak")

    def describe(self, key: str, spec: dict, details: dict | None = None) -> str:
        return (f"{key} (tokens/s; speedup = ÷ dense measured in the same run"
                + (", 2:4 on sparse kernels" if spec.get("sparse_kernels") else "")
                + (", quantized weights on int4/int8 kernels where their format fits" if spec.get("quant_kernels") else "")
                + ("; roofline = fraction of the HBM roofline" if key.startswith("speed:decode")
                   else "; peak = fraction of the measured matmul peak") + ")")

    def notes(self, details: list[dict]) -> list[str]:
        dense = sorted({(label, round(phase["dense_tokens_per_s"])) for rows in details
                        for label, phase in rows.items() if phase.get("dense_tokens_per_s")})
        return ["dense, measured in the same run: " + "; ".join(f"{label} {tps:,} tokens/s" for label, tps in dense)
                ] if dense else []

    def plot_axis(self, metric: str) -> str | None:
        return "speedup" if metric.startswith("speedup:") else None

    def check(self, args: list[str], dataset) -> None:
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
