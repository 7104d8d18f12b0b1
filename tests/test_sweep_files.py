"""Every committed sweep file plans: its keys are RunConfig's, its methods, knobs, patterns, match
targets and evaluations are ones the registry has, so a typo stops here and not after a GPU
machine has been started and loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import build_parser, configs_from_args
from harness.plugins import default_registry
from harness.run.plan import plan_evaluations, plan_runs

SWEEPS = sorted((Path(__file__).parent.parent / "experiments").glob("*.toml"))


@pytest.mark.parametrize("sweep", SWEEPS, ids=[s.stem for s in SWEEPS])
def test_a_sweep_file_plans(sweep):
    registry = default_registry()
    args = build_parser().parse_args(["run", "--config", str(sweep), "--model", "any"])
    configs = configs_from_args(args)
    assert configs
    for config in configs:
        assert plan_runs(config, registry), f"{sweep.name}: a [[runs]] table plans no cell"
        plan_evaluations(config, registry)
