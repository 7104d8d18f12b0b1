"""The plugin contract: one documented function per hook.

A plugin is a module (or object) with functions decorated by ``harness.hookimpl`` whose
names match the specs below. It is found through the ``harness`` entry-point group, so
a third-party package declares in its own ``pyproject.toml``::

    [project.entry-points.harness]
    my_method = "my_package.plugin"

The built-in methods, datasets, evaluations and reporters register in exactly the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pluggy

hookspec = pluggy.HookspecMarker("harness")


@hookspec
def register_methods(register: Callable[[Any], None]) -> None:
    """Register compression methods.

    Call ``register(method)`` once per method, where ``method`` is an instance of a
    subclass of :class:`harness.method.Method` (name, kind, patterns, architectures and
    ``compress``). Method names must be unique across all plugins.
    """


@hookspec
def register_datasets(register: Callable[[Any], None]) -> None:
    """Register text datasets for calibration and perplexity.

    Call ``register(dataset)`` once per dataset, an instance of
    :class:`harness.data.datasets.TextDataset` (a name, how to read it from the hub and from a
    local directory).
    """


@hookspec
def register_evaluations(register: Callable[[Any], None]) -> None:
    """Register evaluations: what is measured on every compressed model.

    Call ``register(evaluator)`` once per evaluation, an instance of a subclass of
    :class:`harness.evaluation.Evaluator`: a ``name`` (``--eval NAME:ARGS`` selects it),
    which way each metric improves, ``prepare`` (once per model) and ``evaluate`` (once per
    compressed model). Names must be unique across all plugins.
    """


#: A reporter: writes one leaderboard table (with its protocol header) and returns the file.
Reporter = Callable[[pd.DataFrame, str, Path], Path]


@hookspec
def register_reporters(register: Callable[[str, Reporter], None]) -> None:
    """Register leaderboard output formats.

    Call ``register(name, write)`` where ``write(table: pandas.DataFrame, header: str,
    path_stem: pathlib.Path) -> pathlib.Path`` writes one leaderboard table in that format
    and returns the file it wrote: ``path_stem`` plus its extension, appended (a stem may hold
    dots, ``qwen2.5-0.5b``: ``with_suffix`` would cut it).
    """
