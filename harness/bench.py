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

from harness.adapters import ModelAdapter
from harness.calibration import Calibration, CalibrationSpec
from harness.method import Target
from harness.plugins import default_registry
from harness.shapes import SHAPES, random_model


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
                   dtype: torch.dtype = torch.float16, batch_size: int = 8, log=print) -> list[dict]:
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
        per_block = calibration.block_seconds
        row = {
            "shape": shape, "method": name, "pattern": pattern, "ratio": target.ratio,
            "calibration": f"{n}x{length}", "blocks_run": layers, "blocks_full": full_layers,
            "total_s": total, "capture_s": calibration.capture_seconds,
            "median_block_s": statistics.median(per_block), "max_block_s": max(per_block),
            "total_extrapolated_s": calibration.capture_seconds + statistics.median(per_block) * full_layers,
            "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        }
        log(json.dumps(row))
        rows.append(row)
        del model, calibration
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def format_rows(rows: list[dict]) -> str:
    from tabulate import tabulate

    cols = ["shape", "method", "pattern", "calibration", "blocks_run", "total_s", "median_block_s",
            "total_extrapolated_s", "peak_gpu_gib", "device"]
    return tabulate([[r[c] for c in cols] for r in rows], headers=cols, tablefmt="github", floatfmt=".2f")
