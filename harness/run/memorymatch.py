"""Matched weight memory: each method compressed to the same stored bytes of its decoder blocks.

``--match memory:M`` asks every method for the compression that keeps M of the dense blocks'
half-precision bytes (``harness.targets.stored_bytes``: codes, scales, zero points and sparse
metadata as the kernels store them), so that a table answers "at half the fp16 bytes, who
loses least?". Bytes depend on shapes and formats, not on which weights survive, so the search
measures shape probes (``Method.shape_probe``) on copies of the model, in seconds:

- a method whose bytes shrink with its ratio (structured pruning: fewer rows and columns; a
  chain whose first stage is structured) is searched to the ratio whose bytes are M of dense,
  within ``tolerance``, by bisection (bytes fall monotonically with the ratio);
- a method with a discrete set of formats (a quantization method's grids, ``memory_grid``; an
  N:M pattern, with the grids of a quantization stage after it) takes, of those at or under M
  (within ``tolerance``), the one whose bytes are nearest to M;
- unstructured sparsity stored densely keeps every byte at any ratio: it cannot be matched.

A method that cannot get at or under M is reported as unreachable, with the nearest it got.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from harness.method import Chain, Method, Target, implied_ratio
from harness.models.adapters import ModelAdapter
from harness.targets import stored_bytes

#: A matched memory is within this many units of the dense bytes (±0.5 % of them).
MEMORY_TOLERANCE = 0.005


@dataclass(frozen=True)
class MemoryTarget:
    fraction: float  # of the dense blocks' half-precision bytes
    tolerance: float = MEMORY_TOLERANCE

    @classmethod
    def parse(cls, match: str) -> MemoryTarget:
        found = re.fullmatch(r"memory:([0-9.]+)", match.strip())
        if not found or not 0 < float(found[1]) < 1:
            raise ValueError(f"--match memory:M needs 0 < M < 1 (the fraction of the dense fp16 bytes kept, "
                             f"e.g. memory:0.5), got {match!r}")
        return cls(float(found[1]))

    @property
    def label(self) -> str:
        return f"m={self.fraction:g}"


@dataclass
class MemorySearch:
    target: float
    fraction: float | None  # the bytes fraction chosen
    ratio: float | None  # the pruning ratio chosen (None: a quantization grid alone)
    options: dict  # the method's options at the chosen point (a grid's bits and group size)
    reached: bool
    probes: list[dict] = field(default_factory=list)
    tolerance: float = MEMORY_TOLERANCE

    def to_dict(self) -> dict:
        return asdict(self)


def grid_stage(method: Method) -> Method | None:
    """The quantization method (or a chain's quantization stage) whose grid a search may choose."""
    if method.kind == "quantization":
        return method
    if isinstance(method, Chain) and method.stages[-1].kind == "quantization":
        return method.stages[-1]
    return None


def with_grid(method: Method, options: dict, grid_options: dict) -> dict:
    """``options`` with a quantization stage's grid set (a chain keeps options per stage)."""
    if isinstance(method, Chain):
        stage = method.stages[-1].name
        return {**options, stage: {**options.get(stage, {}), **grid_options}}
    return {**options, **grid_options}


def chooses_grid(method: Method, target: Target) -> bool:
    """Whether a matched search chooses ``method``'s format rather than a ratio: a quantization
    method, or a chain that quantizes after a pattern that fixes its ratio (N:M)."""
    stage = grid_stage(method)
    return stage is not None and (method.kind == "quantization" or (method.kind != "structured" and bool(target.n_m)))


def check_grid_choice(method: Method, target: Target, match: str) -> None:
    """Refuse bits or a group size given to a method whose format a matched search chooses."""
    stage = grid_stage(method)
    given = (target.options.get(stage.name, {}) if isinstance(method, Chain) else target.options) if stage else {}
    if stage is not None and method.kind != "structured" and {"bits", "group_size", "symmetric"} & set(given):
        raise ValueError(f"--match {match} chooses {method.name}'s bits and group size from its grids; "
                         f"drop -o {stage.name}.bits / group_size / symmetric")


def check_memory_plan(method: Method, target: Target) -> None:
    """Refuse, before anything loads, a memory match the method cannot take part in sensibly."""
    check_grid_choice(method, target, "memory")
    if isinstance(method, Chain) and method.kind == "unstructured" and not target.n_m:
        raise ValueError(f"--match memory: {method.name} prunes unstructured, which stores every byte at any "
                         "ratio; use an N:M pattern (--pattern 2:4) for its pruning stage")


def match_memory(method: Method, target: Target, goal: MemoryTarget, make_model: Callable[[], torch.nn.Module],
                 dense_bytes: int, log=print, max_probes: int = 14) -> MemorySearch:
    """``method``'s ratio, or grid, whose stored block bytes are ``goal.fraction`` of ``dense_bytes``."""
    result = MemorySearch(goal.fraction, None, None, {}, False, tolerance=goal.tolerance)

    def probe(ratio: float, options: dict) -> float:
        adapter = ModelAdapter(make_model())
        method.shape_probe(adapter, Target(ratio, target.pattern, options))
        fraction = sum(stored_bytes(adapter, block) for block in adapter.blocks) / dense_bytes
        result.probes.append({"ratio": ratio, "options": options, "fraction": fraction})
        log(f"  probe r={ratio:.4f} {options or ''}: {fraction:.4f} of the dense bytes")
        return fraction

    implied = implied_ratio(target.pattern)
    stage = grid_stage(method)
    if method.kind != "structured":  # discrete: a pattern's fixed ratio, each grid of a quantization stage
        ratio = implied or 0.0
        candidates = [with_grid(method, target.options, g.options) for g in stage.memory_grid] if stage else [target.options]
        best = None
        for options in candidates:
            fraction = probe(ratio, options)
            if fraction <= goal.fraction + goal.tolerance and (
                    best is None or abs(fraction - goal.fraction) < abs(best[0] - goal.fraction)):
                best = (fraction, options)
        nearest = min(result.probes, key=lambda p: abs(p["fraction"] - goal.fraction))
        chosen = best or (nearest["fraction"], nearest["options"])
        result.fraction, result.options, result.reached = chosen[0], chosen[1], best is not None
        result.ratio = ratio if method.kind != "quantization" else None
        return result
    lo, hi = 0.0, 0.95  # bytes fall with the ratio: bisect [lo, hi] on fraction(r) = M
    f_hi = None
    while f_hi is None:
        try:
            f_hi = probe(hi, target.options)
        except ValueError as error:  # a method may not reach hi at all: back off
            log(f"  r={hi:.3f} impossible ({error}); trying {hi * 0.8:.3f}")
            hi *= 0.8
            if hi < 0.01:
                raise
    if f_hi > goal.fraction + goal.tolerance:
        result.ratio, result.fraction, result.options = hi, f_hi, target.options
        return result
    f_lo = probe(lo, target.options)
    best = min(((lo, f_lo), (hi, f_hi)), key=lambda p: abs(p[1] - goal.fraction))
    # (a bracket narrower than 1e-4 in r holds no other width: the method's steps are coarser
    # than the tolerance there, and the nearest is reported)
    while abs(best[1] - goal.fraction) > goal.tolerance and len(result.probes) < max_probes and hi - lo > 1e-4:
        r = lo + (f_lo - goal.fraction) * (hi - lo) / max(f_lo - f_hi, 1e-9)  # secant, kept inside the bracket
        margin = 0.05 * (hi - lo)
        r = min(max(r, lo + margin), hi - margin)
        f = probe(r, target.options)
        if f > goal.fraction:
            lo, f_lo = r, f
        else:
            hi, f_hi = r, f
        if abs(f - goal.fraction) < abs(best[1] - goal.fraction):
            best = (r, f)
    result.ratio, result.fraction, result.options = best[0], best[1], target.options
    result.reached = abs(best[1] - goal.fraction) <= goal.tolerance
    return result
