"""Loading plugins: entry points of the ``harness`` group, each reported on its own.

Every method, dataset and reporter comes from a plugin, the built-in ones included. A
plugin that fails to import (or whose hook raises) is reported with its error and
skipped; the others still load.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import pluggy

from harness import ENTRY_POINT_GROUP, hookspecs
from harness.data.datasets import TextDataset
from harness.evaluation import Evaluator
from harness.method import PATTERNS, Chain, Method


@dataclass
class PluginInfo:
    name: str
    origin: str  # "package==version (module)" or "<object>" for plugins passed in code
    methods: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    reporters: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Registry:
    methods: dict[str, Method] = field(default_factory=dict)
    datasets: dict[str, TextDataset] = field(default_factory=dict)
    evaluations: dict[str, Evaluator] = field(default_factory=dict)
    reporters: dict[str, Callable] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)

    def method(self, name: str) -> Method:
        """The method called ``name``; ``A+B`` chains installed methods (``harness.method.Chain``)."""
        if "+" in name:
            return Chain([self.method(part) for part in name.split("+")])
        if name not in self.methods:
            raise UnknownName(f"unknown method {name!r}; installed: {', '.join(sorted(self.methods))}")
        return self.methods[name]

    def dataset(self, name: str) -> TextDataset:
        if name not in self.datasets:
            raise UnknownName(f"unknown dataset {name!r}; known: {', '.join(sorted(self.datasets))}")
        return self.datasets[name]

    def evaluation(self, name: str) -> Evaluator:
        if name not in self.evaluations:
            raise UnknownName(f"unknown evaluation {name!r}; installed: "
                              + ", ".join(f"{n}:ARGS" for n in sorted(self.evaluations)))
        return self.evaluations[name]

    def evaluator_for(self, name: str) -> Evaluator | None:
        """The evaluator behind a metric or an ``eval`` entry named ``EVALUATION:...`` (or one of
        its ``metric_prefixes``, such as speedup:...); None if none installed claims it."""
        for evaluator in self.evaluations.values():
            if name.split(":", 1)[0] in (evaluator.name, *evaluator.metric_prefixes):
                return evaluator
        return None

    def higher_is_better(self, metric: str) -> bool:
        """Direction of a metric named ``EVALUATION:...`` or produced by one (speedup:...)."""
        evaluator = self.evaluator_for(metric)
        return True if evaluator is None else evaluator.higher_is_better(metric)


class UnknownName(ValueError):
    pass


class MissingRequirement(ValueError):
    pass


def missing_requirements(plugin: Method | Evaluator) -> list[str]:
    """The pip requirements of ``plugin.requires`` whose module does not import here.

    Importing (not just finding) the module catches a broken install too, e.g. a package
    present without one of its own dependencies."""
    missing = []
    for module, requirement in plugin.requires.items():
        try:
            importlib.import_module(module)
        except Exception:
            missing.append(requirement)
    return missing


def require_installed(plugin: Method | Evaluator) -> None:
    """Raise ``MissingRequirement`` naming the pip line, if ``plugin`` lacks a module it runs on."""
    if missing := missing_requirements(plugin):
        kind = "method" if isinstance(plugin, Method) else "evaluation"
        raise MissingRequirement(f"{kind} {plugin.name!r} needs {', '.join(missing)}, which is not "
                                 f"installed here: pip install {' '.join(missing)}")


def _validate_method(method: Method) -> None:
    for attr in ("name", "kind", "patterns"):
        if not hasattr(method, attr):
            raise TypeError(f"{method!r} does not declare {attr!r}")
    unknown = set(method.patterns) - set(PATTERNS)
    if unknown:
        raise TypeError(f"method {method.name!r} declares unknown patterns {sorted(unknown)}")


def load_plugins(extra: Iterable[object] = (), entry_points: bool = True) -> Registry:
    """Discover plugins and collect what they register.

    ``extra`` are plugin objects (modules, instances) registered in addition to the entry
    points, as a test or a notebook would do.
    """
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    infos: dict[str, PluginInfo] = {}

    if entry_points:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name}=={ep.dist.version}" if ep.dist else "?"
            info = infos.setdefault(ep.name, PluginInfo(ep.name, f"{dist} ({ep.value})"))
            if pm.has_plugin(ep.name):
                continue  # the same entry point seen twice (e.g. editable + site install)
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as error:
                info.error = f"{type(error).__name__}: {error}"
    for plugin in extra:
        name = pm.register(plugin)
        infos[name] = PluginInfo(name, f"<{getattr(plugin, '__name__', type(plugin).__name__)}>")

    def collect(hook: str, add: Callable[[PluginInfo, tuple], None]) -> None:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            info = infos[impl.plugin_name]
            try:
                impl.function(register=lambda *args, info=info: add(info, args))
            except Exception as error:
                info.error = f"{hook}: {type(error).__name__}: {error}"

    def add_method(info: PluginInfo, args: tuple) -> None:
        (method,) = args
        _validate_method(method)
        if method.name in registry.methods:
            raise ValueError(f"method name {method.name!r} is already registered")
        registry.methods[method.name] = method
        info.methods.append(method.name)

    def add_dataset(info: PluginInfo, args: tuple) -> None:
        (dataset,) = args
        registry.datasets[dataset.name] = dataset
        info.datasets.append(dataset.name)

    def add_evaluation(info: PluginInfo, args: tuple) -> None:
        (evaluator,) = args
        if evaluator.name in registry.evaluations:
            raise ValueError(f"evaluation name {evaluator.name!r} is already registered")
        registry.evaluations[evaluator.name] = evaluator
        info.evaluations.append(evaluator.name)

    def add_reporter(info: PluginInfo, args: tuple) -> None:
        name, write = args
        registry.reporters[name] = write
        info.reporters.append(name)

    collect("register_methods", add_method)
    collect("register_datasets", add_dataset)
    collect("register_evaluations", add_evaluation)
    collect("register_reporters", add_reporter)
    registry.plugins = sorted(infos.values(), key=lambda i: i.name)
    return registry


#: Extra plugin modules to load, comma-separated (like PYTEST_PLUGINS): try a plugin without
#: packaging it, or hand one to Ray workers, which inherit the environment.
PLUGINS_ENV = "HARNESS_PLUGINS"


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    import importlib
    import os

    extra = [importlib.import_module(name.strip()) for name in os.environ.get(PLUGINS_ENV, "").split(",")
             if name.strip()]
    return load_plugins(extra)
