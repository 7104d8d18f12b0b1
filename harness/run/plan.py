"""What a run asks for, checked before anything loads: methods × targets, and evaluations.

``plan_runs`` and ``plan_evaluations`` refuse bad input with one clear error (unknown
method, knob or evaluation; a ratio outside (0, 1); a pattern a method cannot produce),
so nothing is loaded, computed or written for a request that cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.config import RunConfig
from harness.evaluation import Evaluator, parse_evals
from harness.method import Chain, Method
from harness.plugins import Registry, require_installed
from harness.run.memorymatch import MemoryTarget, check_grid_choice, check_memory_plan
from harness.run.speedmatch import SpeedTarget
from harness.targets import Target, implied_ratio, validate_ratio

#: Ratios of a run that names none (N:M patterns imply their own).
DEFAULT_RATIOS = (0.2, 0.3)
#: Speed runs keep structured widths in multiples of this (see the methods' ``align``).
SPEED_ALIGN = 8


@dataclass
class Plan:
    method: Method
    target: Target
    matched: bool = True  # False: a native-knob or quantization-grid run, its ratio measured, not enforced
    speed_target: SpeedTarget | None = None  # matched-speedup mode: the ratio is searched
    memory_target: MemoryTarget | None = None  # matched-memory mode: the ratio or grid is searched

    @property
    def variant(self) -> str | None:
        return self.method.variant(self.target)

    @property
    def label(self) -> str:
        if self.speed_target:
            return f"s={self.speed_target.speedup:g}"
        if self.memory_target:
            return self.memory_target.label
        if (setting := self.method.setting_label(self.target)) is not None:
            return setting
        if self.matched:
            return self.target.label()
        knob = self.method.native_knob
        return f"{knob}={self.target.options[knob]:g}"

    @property
    def mode(self) -> str:
        """How the row was set: matched-ratio, matched-speedup, matched-memory, a grid, a native knob."""
        if self.speed_target:
            return "matched-speedup"
        if self.memory_target:
            return "matched-memory"
        if self.matched:
            return "matched-ratio"
        return "grid" if self.method.kind == "quantization" else f"native {self.method.native_knob}"


def parse_match(config: RunConfig) -> SpeedTarget | MemoryTarget | None:
    """``--match``: speedup:S (at the ``--phase``) or memory:M."""
    if not config.match:
        return None
    if config.match.strip().startswith("memory:"):
        return MemoryTarget.parse(config.match)
    return SpeedTarget.parse(config.match, config.match_phase)


def stage_options(method: Method, options: dict) -> dict:
    """The options a method's runs take from the per-method ``-o`` table (a chain: its stages')."""
    if isinstance(method, Chain):
        return {stage.name: options[stage.name] for stage in method.stages if stage.name in options}
    return options.get(method.name, {})


def plan_runs(config: RunConfig, registry: Registry) -> list[Plan]:
    """Check the request against the registry; return the runs it asks for."""
    implied = implied_ratio(config.pattern)
    if "all" in config.methods:  # every installed method that can do the pattern, but "-NAME"s
        but = [n[1:] for n in config.methods if n.startswith("-")]
        if rest := [n for n in config.methods if n != "all" and not n.startswith("-")]:
            raise ValueError(f"--methods all takes exclusions (-NAME) only, got {', '.join(rest)}")
        for name in but:
            registry.method(name)  # an unknown name is refused, listing the installed ones
        names = [n for n, m in registry.methods.items() if not m.ablation_of and n not in but
                 and (m.kind == "reference" or config.pattern in m.patterns)]
    else:
        names = list(dict.fromkeys(config.methods))
    methods = sorted((registry.method(name) for name in names), key=lambda m: m.kind != "reference")
    match = parse_match(config)
    speed_target = match if isinstance(match, SpeedTarget) else None
    memory_target = match if isinstance(match, MemoryTarget) else None
    if match and config.ratios:
        raise ValueError("--match searches the ratio; drop --ratios")
    if implied is not None:
        if any(abs(r - implied) > 1e-9 for r in config.ratios or ()):
            raise ValueError(f"pattern {config.pattern} fixes the ratio at {implied:g}; drop --ratios")
        ratios = [implied]
    else:
        ratios = [validate_ratio(float(r)) for r in (config.ratios if config.ratios is not None else list(DEFAULT_RATIOS))]
        if not ratios:
            raise ValueError("no ratios given")
    plans = []
    for method in methods:
        options = stage_options(method, config.options)
        method.check_options(options)  # a misspelt knob is refused, not silently ignored
        require_installed(method)  # before any cell starts, not when this one comes up
        if method.kind == "reference":  # dense: one row, nothing removed
            plans.append(Plan(method, Target(0.0, "unstructured", options)))
            continue
        if config.pattern not in method.patterns:
            raise ValueError(f"method {method.name!r} does not support pattern {config.pattern!r} "
                             f"(it supports: {', '.join(method.patterns)})")
        if memory_target:
            target = Target(implied or 0.0, config.pattern, options)
            check_memory_plan(method, target)
            plans.append(Plan(method, target, memory_target=memory_target))
            continue
        if speed_target and method.kind == "quantization":  # the search chooses its format
            check_grid_choice(method, Target(0.0, "unstructured", options), "speedup")
            plans.append(Plan(method, Target(0.0, "unstructured", options), speed_target=speed_target))
            continue
        if method.kind == "quantization":  # a grid, not a ratio: one run at its knobs
            plans.append(Plan(method, Target(0.0, "unstructured", options), matched=False))
            continue
        if method.native_knob and method.native_knob in options:
            plans.append(Plan(method, Target(0.0, config.pattern, options), matched=False))
            continue
        if speed_target:  # structured shapes in multiples of 8 unless the user says otherwise
            check_grid_choice(method, Target(implied or 0.0, config.pattern, options), "speedup")
            if method.kind == "structured":
                options = {"align": SPEED_ALIGN, **options}
            plans.append(Plan(method, Target(implied or 0.0, config.pattern, options),
                              speed_target=speed_target))
            continue
        for ratio in ratios:
            plans.append(Plan(method, Target(ratio, config.pattern, options)))
    unknown = set(config.options) - {m.name for m in methods} - {s.name for m in methods if isinstance(m, Chain) for s in m.stages}
    if unknown:
        raise ValueError(f"options given for methods not in this run: {', '.join(sorted(unknown))}")
    return plans


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


def plan_evaluations(config: RunConfig, registry: Registry) -> list[tuple[Evaluator, list[str]]]:
    """The evaluations asked for, each checked, in the order they run (speed last)."""
    evals = parse_evals(config.evals)
    if config.match and not config.match.strip().startswith("memory:"):  # the matched phase is measured on the final model
        evals["speed"] = [config.match_phase] + [a for a in evals.get("speed", []) if a != config.match_phase]
    chosen = [(registry.evaluation(name), args) for name, args in evals.items()]
    for evaluator, args in chosen:
        require_installed(evaluator)
        evaluator.check(args, registry.dataset)
    return sorted(chosen, key=lambda pair: pair[0].order)
