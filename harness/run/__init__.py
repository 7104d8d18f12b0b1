"""Running sweeps: the validated plan, the staged pipeline of one cell, matched-speed search,
Ray, and benchmarks on random-weight models.

    from harness.run import RunConfig, run
    records = run(RunConfig(methods=["magnitude"], ratios=[0.2, 0.3], out="results"))
"""

from __future__ import annotations

from harness.config import RunConfig
from harness.plugins import Registry
from harness.results import Record


def run(config: RunConfig, registry: Registry | None = None, log=print) -> list[Record]:
    """Run every (method, target) of ``config``; return the records (existing ones included):
    one cell after another here, or one Ray task per cell (``config.executor == "ray"``)."""
    if config.executor == "ray":
        from harness.run.ray import run_on_ray

        return run_on_ray(config, log)
    from harness.run.sweep import run_local

    return run_local(config, registry, log)


__all__ = ["RunConfig", "run"]
