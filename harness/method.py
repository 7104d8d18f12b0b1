"""What a compression method is: its declaration, its target and its report.

A method is a small class. The harness calls ``compress`` on a fresh copy of the dense
model, then *measures* what the method achieved; a method never reports its own ratio.

    class MyMethod(Method):
        name = "mine"
        kind = "unstructured"
        patterns = ("unstructured",)

        def compress(self, model, calibration, target):
            for block in calibration.sequential(model):
                ...  # look at block statistics, change block.module in place
            return CompressionReport(knobs={"sparsity": target.ratio})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from harness.quantization import Grid
from harness.targets import PATTERNS, Target, implied_ratio, parse_pattern  # noqa: F401  (the method API)

if TYPE_CHECKING:
    from harness.calibration import Calibration
    from harness.models.adapters import Architecture, ModelAdapter

Kind = Literal["unstructured", "structured", "quantization", "reference"]


@dataclass(frozen=True)
class Knob:
    """One of a method's own options, set with ``-o METHOD.NAME=VALUE``."""

    type: type
    default: Any
    help: str = ""

    def accepts(self, value: Any) -> bool:
        if self.type is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return isinstance(value, self.type)


@dataclass
class CompressionReport:
    """What a method says it did. The harness adds the measured ratios and timings."""

    layer_ratios: dict[str, float] = field(default_factory=dict)  # "layers.3.mlp.up": 0.41
    knobs: dict[str, Any] = field(default_factory=dict)  # native knob values actually used
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by phase
    notes: list[str] = field(default_factory=list)


class Method:
    """Base class of every compression method plugin.

    Class attributes declare what the method supports; the harness checks a request
    against them before any work starts, so bad input fails early with one message.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    #: Sparsity patterns the method can produce, from ``PATTERNS`` (structured methods:
    #: "unstructured" only, meaning "any ratio").
    patterns: ClassVar[tuple[str, ...]] = ("unstructured",)
    #: Adapter family names (``harness.models.adapters.FAMILIES``) it supports; None = all.
    architectures: ClassVar[tuple[str, ...] | None] = None
    #: False for methods that never look at data (the harness then skips calibration).
    needs_calibration: ClassVar[bool] = True
    #: The method's own compression knob (e.g. SliceGPT's "slicing"). When a run sets it
    #: through ``-o METHOD.KNOB=VALUE``, the run reproduces that knob value instead of
    #: matching a ratio: the achieved ratio is measured and reported, not enforced.
    native_knob: ClassVar[str | None] = None
    #: True for a method whose ratios come in steps it cannot split (whole decoder blocks): a
    #: ratio target gets the nearest step; a row off its target by more than the tolerance is
    #: kept as the nearest-ratio result, marked, and ranked beside no matched row.
    discrete_ratios: ClassVar[bool] = False
    #: For an ablation variant, the method it ablates; ``--methods all`` skips variants.
    ablation_of: ClassVar[str | None] = None
    #: One line for ``harness plugins``.
    description: ClassVar[str] = ""
    #: Modules the method imports when it runs, beyond the harness's own, as
    #: ``{module: pip requirement}``. The harness imports them before any work starts, so a
    #: grid missing one fails at once with the pip line, not when that cell comes up.
    requires: ClassVar[dict[str, str]] = {}
    #: The method's own options: name -> ``Knob`` (type, default, help). The harness refuses
    #: any other ``-o METHOD.NAME`` before work starts, and ``harness plugins`` lists them.
    knobs: ClassVar[dict[str, Knob]] = {}
    #: Knobs that make another variant of the method (OWL's ``base``, RIA's ``permute``): a row
    #: set away from their default names them (``owl (base=sparsegpt)``), so two variants at one
    #: target are two rows of a table, not one superseding the other.
    variant_knobs: ClassVar[tuple[str, ...]] = ()

    def unsupported(self, arch: Architecture) -> str | None:
        """Why this method cannot compress models of ``arch``, or None if it can. The default
        reads ``architectures``; a method overrides it to name what an architecture lacks."""
        if self.architectures is not None and arch.family not in self.architectures:
            return (f"method {self.name!r} does not support the {arch.family!r} architecture "
                    f"(it supports: {', '.join(self.architectures)})")
        return None

    def require(self, arch: Architecture) -> None:
        """Raise ``UnsupportedArchitecture`` with ``unsupported``'s reason, if there is one."""
        from harness.models.adapters import UnsupportedArchitecture

        if (why := self.unsupported(arch)) is not None:
            raise UnsupportedArchitecture(why)

    def option(self, target: Target, name: str) -> Any:
        """The value of knob ``name`` for this run: the one asked for, else its default."""
        return target.options.get(name, self.knobs[name].default)

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse unknown knobs (listing the valid ones) and values of the wrong type."""
        for name, value in options.items():
            if name not in self.knobs:
                valid = ", ".join(f"{k} ({v.type.__name__}, default {v.default!r})" for k, v in self.knobs.items())
                raise ValueError(f"method {self.name!r} has no option {name!r}; "
                                 + (f"its options: {valid}" if valid else "it takes no options"))
            if not self.knobs[name].accepts(value):
                raise ValueError(f"option {self.name}.{name} must be {self.knobs[name].type.__name__}, "
                                 f"got {value!r}")

    def compress(
        self, model: ModelAdapter, calibration: Calibration, target: Target
    ) -> CompressionReport:
        raise NotImplementedError

    def setting_label(self, target: Target) -> str | None:
        """How a table names a run that is not at a ratio (a quantization grid: ``w4g128``)."""
        return None

    def variant(self, target: Target) -> str | None:
        """How a table tells this variant from the method's defaults, beside its name: the
        variant knobs set away from their defaults (``base=sparsegpt``), or None."""
        return self.variant_words(target)

    def variant_words(self, target: Target) -> str | None:
        """The variant knobs set away from their defaults, as words (``base=sparsegpt``,
        ``act-order``, ``no-compensate``), or None."""
        words = []
        for name in self.variant_knobs:
            value = self.option(target, name)
            if value != self.knobs[name].default:
                word = name.replace("_", "-")
                if isinstance(value, bool):
                    words.append(word if value else f"no-{word}")
                else:
                    words.append(f"{word}={value:g}" if isinstance(value, float) else f"{word}={value}")
        return " ".join(words) or None

    def ratio_steps(self, model: ModelAdapter) -> list[float] | None:
        """The ratios a method with ``discrete_ratios`` reaches on ``model``, in increasing order
        (a matched-speedup search then probes these only); None: any ratio."""
        return None

    def shape_probe(self, model: ModelAdapter, target: Target) -> None:
        """Give ``model`` the shapes and sparsity pattern ``compress`` would give it, without data.

        Speed depends on shapes and on the sparsity pattern, not on which weights survive,
        so a throughput search can probe many ratios on arbitrary weights (a random model
        of a 7B shape, say) in seconds. The default suits sparsity methods: magnitude masks
        in the target's pattern. A structured method overrides it with its own shapes.
        """
        from harness.sparsity import prune_mask

        if self.kind == "reference":
            return
        if self.kind in ("structured", "quantization"):
            raise NotImplementedError(f"structured method {self.name!r} defines no shape_probe")
        for _, linear in model.named_linears():
            weight = linear.weight.data
            weight[prune_mask(weight.abs(), target.mask_sparsity(linear), target.n_m, per_row=False)] = 0

    def __repr__(self) -> str:
        return f"<method {self.name} ({self.kind})>"


class QuantizationMethod(Method):
    """Base class of weight-only quantization methods: a run is a grid (bits, group size,
    symmetry: ``harness.quantization.Grid``), not a ratio. Every linear of every block is
    replaced by a ``QuantizedLinear``; weights that are zero before quantizing (a pruned
    model's) stay zero, so a quantization method may follow a pruning one (``harness.run.chain``).
    """

    kind = "quantization"
    patterns = ("unstructured",)
    knobs = {"bits": Knob(int, 4, "bits per weight code, 2 to 8"),
             "group_size": Knob(int, 128, "input columns sharing a scale and zero point; -1: one per row"),
             "symmetric": Knob(bool, False, "zero point fixed at the grid's middle (no zero point stored)")}
    #: The grids a matched-memory run may choose from (bits × group size), densest first.
    memory_grid: ClassVar[tuple[Grid, ...]] = (*(Grid(bits, -1, True) for bits in (8, 4)), *(
        Grid(bits, group) for bits in (8, 4, 3) for group in (-1, 32, 64, 128)))
    #: The grids a matched-speed run may choose from, mildest first: the formats the low-bit
    #: kernels serve (int8 per row, int4 in groups), so a probe times a kernel, not a fallback.
    speed_grid: ClassVar[tuple[Grid, ...]] = (Grid(8, -1, True), *(Grid(4, group) for group in (32, 64, 128)))

    def grid(self, target: Target) -> Grid:
        return Grid(self.option(target, "bits"), self.option(target, "group_size"), self.option(target, "symmetric"))

    def setting_label(self, target: Target) -> str:
        """The grid, and the variant knobs set away from their defaults (``w4g128 act-order``)."""
        return " ".join(filter(None, [self.grid(target).label, self.variant_words(target)]))

    def variant(self, target: Target) -> str | None:
        return None  # in the label: a grid row is named by its grid and variant together

    def shape_probe(self, model: ModelAdapter, target: Target) -> None:
        """The grid's format on whatever weights the model has (round to nearest): speed and
        bytes depend on the format, not on which codes a search picked."""
        from harness.quantization import quantized_linear, round_to_nearest

        grid = self.grid(target)
        for block in model.blocks:
            for role, linear in model.linears(block).items():
                codes, scales, zeros = round_to_nearest(linear.weight.data, grid)
                nonzeros = int(torch.count_nonzero(linear.weight))
                model.replace_linear(block, role, quantized_linear(linear, codes, scales, zeros, grid, nonzeros))


class Chain(Method):
    """Methods applied one after another to one model: ``sparsegpt+gptq`` prunes, then quantizes
    what is left (SparseGPT's joint 2:4 + 4-bit setting), ``intraslice+rtn`` slices, then rounds.

    One calibration set serves every stage; each stage walks the model as the stages before it
    left it. The ratio or pattern of the run goes to the pruning stages; each stage takes its own
    knobs (``-o gptq.bits=3``). A quantization stage comes last (pruning methods read plain
    linear weights), and after a pruning stage it keeps pruned weights at zero (GPTQ's
    ``keep_zeros``; RTN's and AWQ's grids keep an exact zero by construction).
    """

    def __init__(self, stages: list[Method]):
        if len(stages) < 2:
            raise ValueError("a chain needs at least two methods: A+B")
        names = [s.name for s in stages]
        if any(s.kind == "reference" for s in stages):
            raise ValueError(f"chain {'+'.join(names)}: the dense reference is not a compression stage")
        if any(s.kind == "quantization" for s in stages[:-1]):
            raise ValueError(f"chain {'+'.join(names)}: a quantization stage must come last "
                             "(pruning methods read plain linear weights)")
        if len(set(names)) != len(names):
            raise ValueError(f"chain {'+'.join(names)} names a method twice")
        self.stages = stages
        self.name = "+".join(names)
        self.kind = stages[0].kind
        self.patterns = stages[0].patterns
        self.needs_calibration = any(s.needs_calibration for s in stages)
        self.native_knob = stages[0].native_knob if stages[0].kind != "quantization" else None
        self.requires = {k: v for s in stages for k, v in s.requires.items()}
        self.description = " then ".join(names)

    @property
    def pruning(self) -> list[Method]:
        return [s for s in self.stages if s.kind != "quantization"]

    def unsupported(self, arch: Architecture) -> str | None:
        return next((why for s in self.stages if (why := s.unsupported(arch)) is not None), None)

    def check_options(self, options: dict[str, Any]) -> None:
        """``options`` per stage: ``{stage name: {knob: value}}``."""
        for stage in self.stages:
            stage.check_options(options.get(stage.name, {}))

    def stage_target(self, stage: Method, target: Target) -> Target:
        options = dict(target.options.get(stage.name, {}))
        if stage.kind == "quantization":
            if "keep_zeros" in stage.knobs and self.pruning:
                options.setdefault("keep_zeros", True)
            return Target(0.0, "unstructured", options)
        return Target(target.ratio, target.pattern, options)

    def setting_label(self, target: Target) -> str:
        labels = []
        for stage in self.stages:
            t = self.stage_target(stage, target)
            knob = stage.native_knob
            labels.append(stage.setting_label(t) or (f"{knob}={t.options[knob]:g}" if knob in t.options else t.label()))
        return "+".join(labels)

    def compress(self, model, calibration, target):
        report = CompressionReport()
        for stage in self.stages:
            done = stage.compress(model, calibration, self.stage_target(stage, target))
            report.knobs[stage.name] = done.knobs
            report.layer_ratios.update(done.layer_ratios)
            report.timings.update({f"{stage.name}.{k}": v for k, v in done.timings.items()})
            report.notes += [f"{stage.name}: {note}" for note in done.notes]
        return report

    def shape_probe(self, model, target):
        for stage in self.stages:
            stage.shape_probe(model, self.stage_target(stage, target))
