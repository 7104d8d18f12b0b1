"""What a run asks for, as one value: ``RunConfig``, built from the command line or a TOML
sweep file (``harness run --config``) and handed to every stage, evaluator and Ray cell."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.models.loading import DEFAULT_MODEL
from harness.serving.config import BASELINE, ServingConfig

DEFAULT_CACHE = Path(os.environ.get("HARNESS_CACHE_DIR", Path.home() / ".cache" / "compression-harness"))


@dataclass
class RunConfig:
    model: str = DEFAULT_MODEL
    methods: list[str] = field(default_factory=lambda: ["dense", "magnitude"])
    ratios: list[float] | None = None  # None: 0.2, 0.3 (N:M patterns imply their own)
    pattern: str = "unstructured"
    calibration: str = "wikitext2:128x2048"
    seed: int = 0
    evals: list[str] = field(default_factory=lambda: ["ppl:wikitext2"])
    eval_windows: int | None = None  # limit on perplexity windows (None: the full protocol)
    zeroshot_limit: int | None = None  # examples per zero-shot task (None: all; recorded)
    eval_length: int | None = None  # window length (None: model context capped at 2048)
    bos: str = "stream"  # where a BOS token goes (harness.calibration.BOS_MODES); recorded as placed
    out: str | Path = "results"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    data_dir: str | None = None
    cache_dir: str | Path | None = DEFAULT_CACHE
    overwrite: bool = False
    save_models: bool = False  # also save each compressed model under OUT/models/ (reloadable)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> knobs
    match: str | None = None  # "speedup:1.25": matched measured throughput instead of ratios
    match_phase: str = "decode@1x512"
    serving: ServingConfig = BASELINE  # how every measured serving step is built (speed, --match)
    # Where the cells run (none of these changes a result, so none is in a cell's identity):
    executor: str = "local"  # "local": one after another here; "ray": one Ray task per cell
    ray_address: str | None = None  # None: start a local Ray cluster; "auto" or "ray://host:10001": join one
    retries: int = 1  # Ray: times a cell whose worker died (OOM, node loss) is run again
    ray_gpus: float | None = None  # Ray: GPUs per cell, fractions share one (None: 1 when the cluster has GPUs, else 0)
    ray_memory_gb: float | None = None  # Ray: CPU memory a cell reserves (block-offloaded weights)
    ray_accelerator: str | None = None  # Ray: GPU type every cell must run on, e.g. "H100"
