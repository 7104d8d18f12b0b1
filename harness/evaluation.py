"""Evaluations are plugins: what is measured on each compressed model.

An evaluator is found by the name before the colon of ``--eval NAME:ARGS`` and registered
through the ``register_evaluations`` hook, exactly like a method. The built-in ones are
perplexity (``ppl:wikitext2,c4``), zero-shot accuracy (``zeroshot:piqa,arc_easy``) and
speed (``speed:decode@1x512``); a third-party package adds its own the same way:

    class Sparsity(Evaluator):
        name = "sparsity"
        description = "fraction of exact zeros in the block linears"

        def prepare(self, args, context):
            return Prepared(spec={"sparsity": {}})

        def evaluate(self, prepared, model, target, context):
            zeros = sum(int((l.weight == 0).sum()) for _, l in model.named_linears())
            total = sum(l.weight.numel() for _, l in model.named_linears())
            return EvalResult({"sparsity:blocks": zeros / total})

The runner calls ``check`` for every evaluation before anything loads (bad input fails
first), ``prepare`` once per model (tokenise data, measure a dense baseline), and
``evaluate`` on every compressed model. ``prepare``'s ``spec`` is recorded and is part of
a record's identity: a changed protocol reruns a row instead of reusing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.data.datasets import TextDataset
    from harness.models.adapters import ModelAdapter
    from harness.targets import Target


@dataclass
class EvalContext:
    """What an evaluator may use: the run's settings and the model, loaded only when asked."""

    config: RunConfig  # the run's settings (eval windows, zero-shot limit, data dir, ...)
    dataset: Callable[[str], TextDataset]  # a registered dataset by name ("wikitext2")
    device: torch.device
    context_length: int  # the model's context, capped at 2048: the papers' window
    model_fingerprint: str  # the tokenizer's identity (``models.fingerprint``), for token caches
    tokenizer: Callable[[], Any]  # loads on first call
    dense_model: Callable[[], torch.nn.Module]  # the pristine dense model: copy it, never change it


@dataclass
class Prepared:
    """An evaluation ready to run: what it will record (``spec``) and its inputs (``state``)."""

    spec: dict[str, dict]  # record["eval"] entries, e.g. {"ppl:wikitext2": {"windows": 148, ...}}
    state: Any = None


@dataclass
class EvalResult:
    metrics: dict[str, float]  # leaderboard columns, e.g. {"ppl:wikitext2": 21.6}
    details: dict[str, Any] = field(default_factory=dict)  # kept in the record, not tabulated


class Evaluator:
    """Base class of every evaluation plugin."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: Evaluations run in ascending order: speed last, because moving a 2:4 model onto
    #: sparse kernels is one-way.
    order: ClassVar[int] = 0
    #: Metric name prefixes this evaluator produces besides its own name ("NAME:...").
    metric_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Modules it imports when it runs, as ``{module: pip requirement}`` (see ``Method.requires``).
    requires: ClassVar[dict[str, str]] = {}

    def higher_is_better(self, metric: str) -> bool:
        """Which way ``metric`` improves (the leaderboard's ranking, ``check``'s verdict)."""
        return True

    def describe(self, key: str, spec: dict, details: dict | None = None) -> str:
        """How a table's header states this evaluation's protocol. ``key`` is the record's
        ``eval`` entry ("ppl:wikitext2"), ``spec`` what ``prepare`` recorded there, ``details``
        what ``evaluate`` kept for one of the table's records (None if it kept nothing)."""
        return describe_spec(key, spec)

    def notes(self, details: list[dict]) -> list[str]:
        """Lines under a table's protocol that this evaluation's details call for (what every
        speedup divides by, say), given each row's ``details``; none by default."""
        return []

    def plot_axis(self, metric: str) -> str | None:
        """Where a leaderboard plots ``metric``: "quality" (against ratio and speedup),
        "speedup" (an x-axis for quality), or None (not plotted)."""
        return "quality"

    def check(self, args: list[str], dataset: Callable[[str], TextDataset]) -> None:
        """Refuse bad arguments before anything loads (the default accepts any); ``dataset``
        finds a registered dataset by name, or refuses the name."""

    def prepare(self, args: list[str], context: EvalContext) -> Prepared:
        raise NotImplementedError

    def evaluate(self, prepared: Prepared, model: ModelAdapter, target: Target,
                 context: EvalContext) -> EvalResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<evaluator {self.name}>"


def describe_spec(key: str, spec: dict) -> str:
    """An evaluation as its record states it, for evaluators that say nothing more."""
    return f"{key} ({', '.join(f'{name} {value}' for name, value in spec.items())})" if spec else key


def parse_evals(items: list[str]) -> dict[str, list[str]]:
    """``["ppl:wikitext2,c4", "zeroshot:piqa"]`` → ``{"ppl": ["wikitext2", "c4"], "zeroshot": ["piqa"]}``.

    Within one item, a part without ``NAME:`` continues the evaluator before it; each item names
    its own (a bare ``"zeroshot"`` after ``"ppl:wikitext2"`` is refused, not read as a dataset).
    """
    evals: dict[str, list[str]] = {}
    for item in items:
        name = None
        for part in filter(None, (p.strip() for p in item.split(","))):
            if ":" in part:
                name, part = part.split(":", 1)
            if name is None:
                raise ValueError(f"evaluation {part!r} names no evaluator; write NAME:ARGS, e.g. ppl:wikitext2 or zeroshot:piqa,arc_easy")
            evals.setdefault(name, []).append(part)
    return evals


def cache_path(context: EvalContext) -> Path | None:
    return Path(context.config.cache_dir) if context.config.cache_dir else None
