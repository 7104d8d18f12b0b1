"""Matched measured throughput: the ratio at which a method reaches a target speedup.

Comparing methods at one *parameter* ratio hides that they buy different speed with it
(2:4 needs sparse kernels, unstructured sparsity buys none, a sliced residual stream buys
more than narrow MLPs). At matched speedup each method is searched to the ratio where its
*measured* throughput over dense, in one run on one device, hits the target; quality is
then compared there.

A quantization method (or a chain whose last stage quantizes after an N:M pattern) has no
ratio to search: it takes the mildest of its served formats (``speed_grid``) that reaches the
target.

The search times shape probes (``Method.shape_probe``: the compressed shapes on whatever
weights the model has, seconds per probe), not real compressions. Speedup grows with the
ratio, so the ratio is found by a safeguarded secant search (regula falsi, kept inside
the bracket) starting from the known point (r = 0, speedup 1) and a probe at ``r_max``.
A method whose probe at ``r_max`` stays below the target cannot reach it (unstructured
sparsity on dense kernels is the usual case): it is reported as unreachable, with the
best speedup it reached. An N:M pattern fixes the ratio, so it gets one probe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from harness.method import Method, Target, implied_ratio
from harness.models.adapters import ModelAdapter
from harness.run.memorymatch import chooses_grid, grid_stage, with_grid
from harness.serving.config import BASELINE, ServingConfig
from harness.serving.step import SpeedSpec
from harness.serving.timing import measure_model
from harness.targets import ParameterCount, measure_ratio


@dataclass(frozen=True)
class SpeedTarget:
    speedup: float
    spec: SpeedSpec
    tolerance: float = 0.02  # relative: |s − target| ≤ tolerance · target is a match

    @classmethod
    def parse(cls, match: str, phase: str, tolerance: float = 0.02) -> SpeedTarget:
        found = re.fullmatch(r"speedup:([0-9.]+)", match.strip())
        if not found or float(found[1]) <= 1.0:
            raise ValueError(f"--match must be speedup:S with S > 1 (e.g. speedup:1.25), got {match!r}")
        return cls(float(found[1]), SpeedSpec.parse(phase), tolerance)

    @property
    def label(self) -> str:
        return f"{self.speedup:g}x {self.spec.label}"


@dataclass
class SearchResult:
    target: float
    phase: str
    ratio: float | None  # the ratio found (None: no probe succeeded)
    speedup: float | None  # the probed speedup there
    reached: bool
    probes: list[dict] = field(default_factory=list)  # every probe: ratio, speedup, tokens/s
    tolerance: float = 0.02  # relative: what counted as a match
    options: dict | None = None  # a quantization grid's options, where the search chose one

    def to_dict(self) -> dict:
        return asdict(self)


class ProbeMemo:
    """The probes a search has measured, kept in a file beside its cell's record, so that a
    search cut midway (a deadline, a crash) resumes where it stopped: the search is a
    deterministic function of its probes, so a rerun retraces the same ratios, reads the ones
    measured before and measures only the rest. Each speedup was measured against the dense
    model of its own run; probes from another device or torch version are not reused.
    The file is JSON lines, one probe a line, appended as it is measured (a line cut by a
    crash is ignored); the runner deletes it once the cell's record is written."""

    def __init__(self, path: Path, context: dict):
        self.path, self.context = Path(path), context
        self.known: dict[tuple, float] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if entry.get("context") == context:
                    self.known[round(entry["ratio"], 6), entry.get("grid", "")] = entry["speedup"]

    def get(self, ratio: float, grid: str = "") -> float | None:
        return self.known.get((round(ratio, 6), grid))

    def put(self, ratio: float, speedup: float, grid: str = "") -> None:
        self.known[round(ratio, 6), grid] = speedup
        with self.path.open("a") as f:  # one short line per probe: appended whole, or ignored on reading
            f.write(json.dumps({"ratio": ratio, "grid": grid, "speedup": speedup, "context": self.context}) + "\n")


def probe_speed(method: Method, make_model: Callable[[], torch.nn.Module], target: Target,
                specs: list[SpeedSpec], device: torch.device, serving: ServingConfig = BASELINE,
                dense_count: ParameterCount | None = None, profile: bool = False) -> tuple[float | None, dict[str, dict]]:
    """``method``'s shapes at ``target`` on a fresh model from ``make_model``: their measured
    ratio (when ``dense_count`` is given) and tokens/s for every spec."""
    model = make_model()
    adapter = ModelAdapter(model)
    method.shape_probe(adapter, target)
    ratio = measure_ratio(dense_count, adapter).ratio if dense_count is not None else None
    results = measure_model(adapter, target.pattern, specs, device, serving, profile)
    del model, adapter
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return ratio, results


def search_ratio(speedup_at: Callable[[float], float], target: SpeedTarget, pattern_ratio: float | None = None,
                 r_max: float = 0.6, max_probes: int = 8, log=print, memo: ProbeMemo | None = None,
                 steps: list[float] | None = None) -> SearchResult:
    """The ratio r with speedup_at(r) ≈ target.speedup; ``pattern_ratio`` for N:M (one probe);
    ``steps`` for a method that reaches only those ratios: the smallest step whose speedup
    reaches the target (within its tolerance), found by bisection over the steps up to r_max.
    ``memo`` supplies probes an earlier run measured and keeps the new ones."""
    result = SearchResult(target.speedup, target.spec.label, None, None, False, tolerance=target.tolerance)
    goal, tol = target.speedup, target.tolerance * target.speedup

    def probe(r: float) -> float:
        known = memo.get(r) if memo else None
        s = speedup_at(r) if known is None else known
        result.probes.append({"ratio": r, "speedup": s, **({"resumed": True} if known is not None else {})})
        log(f"  probe r={r:.4f}: {s:.3f}x" + (" (measured by an earlier, cut run)" if known is not None else ""))
        if memo and known is None:
            memo.put(r, s)
        if result.speedup is None or abs(s - goal) < abs(result.speedup - goal):
            result.ratio, result.speedup = r, s
        return s

    if pattern_ratio is not None:
        probe(pattern_ratio)
        result.reached = result.speedup >= goal - tol
        return result
    if steps:
        return _search_steps(probe, [r for r in steps if r <= r_max] or steps[:1], goal - tol, result)
    hi = r_max
    while True:  # a method may not reach r_max at all (e.g. too little to remove): back off
        try:
            s_hi = probe(hi)
            break
        except ValueError as error:
            log(f"  r={hi:.3f} impossible ({error}); trying {hi * 0.8:.3f}")
            hi *= 0.8
            if hi < 0.01:
                raise
    if s_hi < goal - tol:  # cannot get there: report the best it reached
        result.ratio, result.speedup = hi, s_hi
        return result
    lo, s_lo = 0.0, 1.0  # dense is 1.0x by definition
    while abs(result.speedup - goal) > tol and len(result.probes) < max_probes:
        r = lo + (goal - s_lo) * (hi - lo) / max(s_hi - s_lo, 1e-9)  # secant through the bracket
        margin = 0.05 * (hi - lo)
        r = min(max(r, lo + margin), hi - margin)
        s = probe(r)
        if s < goal:
            lo, s_lo = r, s
        else:
            hi, s_hi = r, s
    result.reached = abs(result.speedup - goal) <= tol
    return result


def _search_steps(probe: Callable[[float], float], steps: list[float], enough: float,
                  result: SearchResult) -> SearchResult:
    """The smallest of ``steps`` whose probe reaches ``enough`` (speedup grows with the ratio)."""
    lo, hi = -1, len(steps) - 1  # steps[hi] reaches it, steps[lo] does not (lo = -1: dense)
    if probe(steps[hi]) < enough:
        return result
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(steps[mid]) >= enough:
            hi = mid
        else:
            lo = mid
    result.ratio = steps[hi]
    result.speedup = next(p["speedup"] for p in result.probes if p["ratio"] == steps[hi])
    result.reached = True
    return result


def search_grid(speedup_at: Callable[[dict], float], target: SpeedTarget, grids: list[tuple[str, dict]],
                ratio: float, log=print, memo: ProbeMemo | None = None) -> SearchResult:
    """The mildest of ``grids`` (label, options; mildest first) whose speedup reaches the target:
    a quantization method trades quality for speed only through its format, so the first format
    fast enough is the one that loses least. None reaching it: the fastest is reported."""
    result = SearchResult(target.speedup, target.spec.label, ratio, None, False, tolerance=target.tolerance)
    enough = target.speedup * (1 - target.tolerance)
    for label, options in grids:
        known = memo.get(ratio, label) if memo else None
        s = speedup_at(options) if known is None else known
        result.probes.append({"ratio": ratio, "grid": label, "speedup": s, **({"resumed": True} if known is not None else {})})
        log(f"  probe {label}: {s:.3f}x" + (" (measured by an earlier, cut run)" if known is not None else ""))
        if memo and known is None:
            memo.put(ratio, s, label)
        if result.speedup is None or s > result.speedup:
            result.speedup, result.options = s, options
        if s >= enough:
            result.speedup, result.options, result.reached = s, options, True
            break
    return result


def match_speedup(method: Method, target: Target, goal: SpeedTarget, make_model: Callable[[], torch.nn.Module],
                  dense_tokens_per_s: float, device: torch.device, serving: ServingConfig = BASELINE,
                  log=print, memo: ProbeMemo | None = None) -> SearchResult:
    """The one speed-match service (``harness run --match`` and ``harness bench speed --match``):
    ``method``'s ratio whose shape probe runs ``goal.speedup`` × dense in ``goal.spec``.
    ``target`` gives the pattern and the method's options; its ratio is what is searched."""

    def speedup_at(ratio: float, options: dict | None = None) -> float:
        probe = Target(ratio, target.pattern, target.options if options is None else options)
        _, results = probe_speed(method, make_model, probe, [goal.spec], device, serving)
        return results[goal.spec.label]["tokens_per_s"] / dense_tokens_per_s

    if chooses_grid(method, target):
        stage = grid_stage(method)
        grids = [(g.label, with_grid(method, target.options, g.options)) for g in stage.speed_grid]
        log(f"{method.name}: searching its format for {goal.label} (dense {dense_tokens_per_s:.1f} tokens/s)")
        ratio = implied_ratio(target.pattern) or 0.0
        return search_grid(lambda options: speedup_at(ratio, options), goal, grids, ratio, log=log, memo=memo)
    log(f"{method.name}: searching the ratio for {goal.label} (dense {dense_tokens_per_s:.1f} tokens/s)")
    steps = method.ratio_steps(ModelAdapter(make_model())) if method.discrete_ratios else None
    return search_ratio(speedup_at, goal, implied_ratio(target.pattern), log=log, memo=memo, steps=steps)
