"""A sweep as a short pipeline of stages, run in this process (``harness.run.run`` picks this
or Ray, whose cells run the same stages):

    plan → load → calibrate → prepare evaluations → for every (method, target):
        compress → record the measured ratio → evaluate → write the record

``plan`` refuses bad input before anything loads (``harness.run.plan``). The dense model, its
tokenizer and the shared calibration set are loaded once, and only when a run needs them:
a finished sweep resumes without loading the model. Every stage below is a function that
can be read and tested alone; ``run_local`` only strings them together.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata as md
import platform
import resource
import subprocess
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

import harness
from harness.calibration import (
    Calibration,
    CalibrationSpec,
    bos_id,
    bos_placement,
    draw_windows,
    load_or_make,
    prefixed,
    tokenize,
)
from harness.config import RunConfig
from harness.evaluation import EvalContext, Evaluator, Prepared
from harness.models import loading as models
from harness.models.adapters import ModelAdapter, architecture_for
from harness.models.export import export_info, save_compressed
from harness.plugins import Registry, default_registry
from harness.results import SCHEMA_VERSION, Record, load_record, record_path, run_key, write_record
from harness.run.memorymatch import match_memory
from harness.run.plan import Plan, plan_evaluations, plan_runs, resolve_device
from harness.run.speedmatch import ProbeMemo, match_speedup
from harness.serving.device import device_name
from harness.targets import (
    RATIO_TOLERANCE,
    ParameterCount,
    RatioMismatch,
    Target,
    check_pattern,
    check_ratio,
    count_parameters,
    measure_ratio,
)

#: Models smaller than this many parameters are copied for each run; larger ones are
#: reloaded from disk instead, so two copies never sit in CPU memory at once.
COPY_LIMIT = 3e9
#: Versions recorded in every record's provenance (the locked set pins them in CI).
RECORDED_PACKAGES = ("transformers", "torch", "accelerate", "gguf", "lm-eval", "datasets", "pluggy")


class Unreachable(Exception):
    """A method cannot reach the target speedup or memory at any ratio or grid it can produce."""


class ModelSession:
    """The model every run of a sweep starts from; its parts load on first use."""

    def __init__(self, config: RunConfig, dtype: torch.dtype, log=print):
        self.name, self.dtype, self.log = config.model, dtype, log
        self.cache_dir = config.cache_dir
        models.resolve(config.model)  # a missing model fails before anything is loaded
        self.config = models.load_config(config.model)
        self.arch = architecture_for(self.config.model_type)
        self.context_length = min(getattr(self.config, "max_position_embeddings", 2048) or 2048, 2048)

    @functools.cached_property
    def fingerprint(self) -> str:
        """The tokenizer's identity (``models.fingerprint``): hashed once per sweep."""
        return models.fingerprint(self.name)

    @functools.cached_property
    def identity(self) -> str:
        """The checkpoint's identity (``models.identity``), recorded in every record."""
        return models.identity(self.name)

    @functools.cached_property
    def display_name(self) -> str:
        """Its name for tables and folders (``models.display_name``): never a machine path."""
        return models.display_name(self.name)

    @functools.cached_property
    def tokenizer(self):
        return models.load_tokenizer(self.name, self.cache_dir)

    @functools.cached_property
    def dense(self) -> tuple[torch.nn.Module, ParameterCount]:
        self.log(f"loading {self.name} ({self.dtype}) ...")
        model = models.load_model(self.name, self.dtype, self.cache_dir)[0]
        counted = count_parameters(ModelAdapter(model))
        from harness.models.export import export_ratio, is_compressed_dir, read_metadata

        if is_compressed_dir(self.name):  # an export: say what it is, measured again here
            meta = read_metadata(self.name)
            ratio = export_ratio(self.name, counted)
            self.log(f"{self.name}: {meta.get('method')} export, measured r = "
                     f"{'?' if ratio is None else f'{ratio:.4f}'} of its dense model (its record: {meta.get('ratio')})")
        return model, counted

    def fresh_copy(self) -> torch.nn.Module:
        model = self.dense[0]
        if sum(p.numel() for p in model.parameters()) < COPY_LIMIT:
            return copy.deepcopy(model)
        return models.load_model(self.name, self.dtype, self.cache_dir)[0]


# --- stages ---------------------------------------------------------------------------------
def load(config: RunConfig, plans: list[Plan], dtype: torch.dtype, log=print) -> ModelSession:
    """Read the model's config (not its weights) and check every method supports it."""
    session = ModelSession(config, dtype, log)
    for plan in plans:
        plan.method.require(session.arch)
    return session


def calibrate(config: RunConfig, registry: Registry, session: ModelSession, device: torch.device,
              log=print) -> Calibration:
    """The one calibration set every method of the sweep shares, cached by content."""
    spec = CalibrationSpec.parse(config.calibration, config.seed)
    dataset = registry.dataset(spec.dataset)
    # Resolved before the cache: a cache is keyed on the file's content and the tokenizer's,
    # so other data behind the same path (or none at all) is never served stale.
    source = dataset.locate("calibration", config.data_dir)

    bos = bos_placement(session.tokenizer, config.bos)

    def make() -> dict:  # as the references draw it: windows of the tokenised stream (with a BOS each, for "window")
        ids = tokenize(session.tokenizer, dataset.read(source), bos)
        if bos == "window":
            return {"input_ids": prefixed(draw_windows(ids, spec.n, spec.length - 1, spec.seed), bos_id(session.tokenizer))}
        return {"input_ids": draw_windows(ids, spec.n, spec.length, spec.seed)}

    cache = Path(config.cache_dir) if config.cache_dir else None
    key = (session.fingerprint, source.identity, str(spec)) + ((bos,) if bos != "none" else ())
    drawn = load_or_make(cache, "calibration", key, make)
    log(f"calibration: {spec} from {source.path}" + (f", BOS: {bos}" if bos != "none" else ""))
    return Calibration(drawn["input_ids"], spec, source.path, device, config.batch_size, source.sha256, bos=bos)


def prepare_evaluations(evaluations: list[tuple[Evaluator, list[str]]], context: EvalContext,
                        log=print) -> list[tuple[Evaluator, Prepared]]:
    prepared = []
    for evaluator, args in evaluations:
        prepared.append((evaluator, evaluator.prepare(args, context)))
        for name, spec in prepared[-1][1].spec.items():
            windows = spec.get("windows"), spec.get("windows_total")
            note = f" (subsampled: {windows[0]} of {windows[1]})" if None not in windows and windows[0] < windows[1] else ""
            log(f"eval {name}{note}")
    return prepared


def new_record(plan: Plan, key: str, session: ModelSession, calibration: Calibration | None,
               eval_spec: dict, registry: Registry, device: torch.device, seed: int) -> Record:
    method = plan.method
    mode = plan.mode
    plugin = next((p.origin for p in registry.plugins if method.name in p.methods), None)
    return Record(
        key=key, model=session.name, model_id=session.identity, model_name=session.display_name, architecture=session.arch.family, dtype=str(session.dtype).removeprefix("torch."),
        method=method.name, method_kind=method.kind, target=asdict(plan.target), mode=mode, label=plan.label,
        variant=plan.variant,
        calibration=calibration.describe() if calibration and method.needs_calibration else None,
        eval=eval_spec, provenance={
            "harness": harness.__version__, "versions": _versions(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": _versions().get("transformers"), "plugin": plugin,
            "git_commit": _git_commit(), "device": device_name(device), "seed": seed,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def reusable(path: Path, config: RunConfig, log=print, model_id: str | None = None) -> Record | None:
    """The finished record at ``path`` if the sweep may keep it; says why when it may not.
    ``model_id``: the checkpoint's identity now; a record of other weights behind the same
    path is recomputed."""
    if not path.exists():
        return None
    record = load_record(path)
    if record is None:
        log(f"{path} is unreadable (truncated or corrupt); recomputing it")
    elif model_id and record.model_id and record.model_id != model_id:
        log(f"{record.method} @ {record.label}: its record is of other weights ({record.model_id[:20]}…); recomputing it")
    elif record.ok and not config.overwrite:
        if config.save_models and not (record.saved_model and Path(record.saved_model).is_dir()):
            log(f"{record.method} @ {record.label}: record exists but its model was not saved; "
                "recomputing it to save the model")
            return None
        log(f"{record.method} @ {record.label}: already done ({path.name}), skipped")
        return record
    return None


def compress(plan: Plan, session: ModelSession, calibration: Calibration | None, record: Record,
             prepared: list[tuple[Evaluator, Prepared]], config: RunConfig, device: torch.device,
             log=print, probes: Path | None = None) -> tuple[ModelAdapter, Target]:
    """A fresh copy of the dense model, compressed to the plan's target (searched first in
    matched-speedup mode; ``probes``: the file that keeps the search's probes for a rerun)."""
    target = plan.target
    if plan.speed_target and plan.method.kind != "reference":
        dense_speed = next(p.state for e, p in prepared if e.name == "speed")
        memo = probes and ProbeMemo(probes, {"device": device_name(device), "torch": torch.__version__,
                                             "phase": plan.speed_target.spec.label})
        found = match_speedup(plan.method, target, plan.speed_target, session.fresh_copy,
                              dense_speed.tokens_per_s(plan.speed_target.spec.label), device,
                              config.serving, log=log, memo=memo)
        record.match = found.to_dict()
        if not found.reached:
            at = f"r={found.ratio:.4f}" if found.options is None else next(p["grid"] for p in found.probes if p["speedup"] == found.speedup)
            raise Unreachable(f"best {found.speedup:.3f}x at {at} (target {plan.speed_target.label})")
        target = Target(found.ratio, target.pattern, target.options if found.options is None else found.options)
        record.target = asdict(target)
    if plan.memory_target and plan.method.kind != "reference":
        found = match_memory(plan.method, target, plan.memory_target, session.fresh_copy,
                             session.dense[1].block_bytes, log=log)
        record.match = found.to_dict()
        if not found.reached:
            raise Unreachable(f"nearest {found.fraction:.4f} of the dense bytes (target {plan.memory_target.fraction:g})")
        target = Target(found.ratio or 0.0, target.pattern, found.options)
        record.target = asdict(target)
    adapter = ModelAdapter(session.fresh_copy())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    record.report = asdict(plan.method.compress(adapter, calibration, target))
    record.timings["compress_s"] = time.perf_counter() - start
    return adapter, target


def record_ratio(adapter: ModelAdapter, plan: Plan, target: Target, dense: ParameterCount, record: Record) -> None:
    """The achieved ratio; a matched run that misses its target fails here."""
    measured = measure_ratio(dense, adapter)
    record.achieved = measured.to_dict()
    if not plan.matched or plan.method.kind == "reference":
        return
    if plan.memory_target:  # the bytes the search chose are the bytes the model has
        kept, chosen = 1 - measured.memory_ratio, record.match["fraction"]
        if abs(kept - chosen) > plan.memory_target.tolerance:
            raise RatioMismatch(f"the compressed model keeps {kept:.4f} of the dense bytes; its search chose {chosen:.4f}")
        if target.ratio == 0.0:
            return
    if target.n_m:
        check_pattern(adapter, target.n_m)  # N:M: the pattern is the target, r is reported
    elif plan.method.discrete_ratios and abs(measured.ratio - target.ratio) > RATIO_TOLERANCE:
        if not plan.speed_target:  # a searched speed is still the match: its ratio is reported
            record.mode = "nearest-ratio"
    else:
        check_ratio(measured.ratio, target.ratio, dense=dense)


def evaluate(adapter: ModelAdapter, target: Target, prepared: list[tuple[Evaluator, Prepared]],
             context: EvalContext, record: Record) -> None:
    start = time.perf_counter()
    for evaluator, ready in prepared:
        result = evaluator.evaluate(ready, adapter, target, context)
        record.metrics.update(result.metrics)
        record.higher_is_better.update({m: evaluator.higher_is_better(m) for m in result.metrics})
        if result.details:
            record.details[evaluator.name] = result.details
    record.timings["eval_s"] = time.perf_counter() - start


@dataclass
class Sweep:
    """What every cell of a sweep shares: the model session, the calibration set, the
    prepared evaluations. Built once per process (the driver, or each Ray worker)."""

    config: RunConfig
    registry: Registry
    plans: list[Plan]
    device: torch.device
    session: ModelSession
    calibration: Calibration | None
    context: EvalContext
    prepared: list[tuple[Evaluator, Prepared]]
    eval_spec: dict

    def cell(self, plan: Plan) -> tuple[str, Path]:
        """The cell's identity: a hash of everything that defines its result, and its record's path."""
        method, config = plan.method, self.config
        calibration = self.calibration
        key = run_key(model=self.session.fingerprint, method=method.name, target=asdict(plan.target),
                      matched=plan.matched, dtype=str(self.session.dtype),
                      speed_target=plan.speed_target and plan.speed_target.label,
                      **({"memory_target": plan.memory_target.label} if plan.memory_target else {}),
                      calibration=calibration.describe() if calibration and method.needs_calibration else None,
                      evals=self.eval_spec, schema=SCHEMA_VERSION, harness=harness.__version__)
        return key, record_path(Path(config.out), self.session.display_name, method.name, plan.label, key)


def prepare_sweep(config: RunConfig, registry: Registry | None = None, log=print,
                  calibration_ids: torch.Tensor | None = None) -> Sweep:
    """Plan the cells, read the model's config, draw the calibration set (from the shared
    cache when another process drew it), prepare the evaluations. ``calibration_ids``: the set
    the sweep's first task drew; a Ray cell refuses to run on any other."""
    registry = registry or default_registry()
    plans, evaluations = plan_runs(config, registry), plan_evaluations(config, registry)
    registry.dataset(CalibrationSpec.parse(config.calibration, config.seed).dataset)
    device = resolve_device(config.device)
    session = load(config, plans, models.pick_dtype(config.dtype, str(device)), log)
    calibration = None
    if any(p.method.needs_calibration for p in plans):
        calibration = calibrate(config, registry, session, device, log)
        if calibration_ids is not None and not torch.equal(calibration.input_ids, calibration_ids):
            raise RuntimeError("this worker drew a different calibration set than the sweep's first task")
    context = EvalContext(config, registry.dataset, device, config.eval_length or session.context_length,
                          session.fingerprint, lambda: session.tokenizer, lambda: session.dense[0])
    prepared = prepare_evaluations(evaluations, context, log)
    eval_spec = {name: spec for _, p in prepared for name, spec in p.spec.items()}
    return Sweep(config, registry, plans, device, session, calibration, context, prepared, eval_spec)


def run_cell(sweep: Sweep, plan: Plan, log=print) -> Record:
    """One cell: a method at a target, its evaluations included; its record, written atomically
    (an existing finished record with the same identity is reused)."""
    config, session, calibration, device = sweep.config, sweep.session, sweep.calibration, sweep.device
    method = plan.method
    key, path = sweep.cell(plan)
    if (done := reusable(path, config, log, session.identity)) is not None:
        return done
    log(f"{method.name} @ {plan.label}: compressing ...")
    probes = probe_memo_path(path)
    if config.overwrite:  # redo means measure again: no probe of an earlier, cut search is reused
        probes.unlink(missing_ok=True)
    record = new_record(plan, key, session, calibration, sweep.eval_spec, sweep.registry, device, config.seed)
    try:
        adapter, target = compress(plan, session, calibration, record, sweep.prepared, config, device, log,
                                   probes=probes)
        record_ratio(adapter, plan, target, session.dense[1], record)
        if config.save_models:  # before speed: a 2:4 model moves to sparse kernels one way
            record.saved_model = str(save_compressed(adapter.model, session.tokenizer,
                                                     Path(config.out) / "models" / path.stem, export_info(record)))
        evaluate(adapter, target, sweep.prepared, sweep.context, record)
        log(f"{method.name} @ {plan.label}: ratio {record.achieved['ratio']:.4f}, "
            + ", ".join(f"{k} {v:.3f}" for k, v in record.metrics.items()))
    except Unreachable as error:  # reported, with the best speedup it reached
        record.status, record.error = "unreachable", str(error)
        log(f"{method.name} @ {plan.label}: cannot reach the target: {error}")
    except Exception as error:  # one failed run must not lose the others
        record.status, record.error = "failed", f"{type(error).__name__}: {error}"
        record.traceback = traceback.format_exc(limit=8)
        log(f"{method.name} @ {plan.label}: FAILED: {record.error}")
    record.memory = {"peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                     "peak_process_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    write_record(path, record)
    if record.ok or record.status == "unreachable":  # the record holds the search's probes now
        probes.unlink(missing_ok=True)
    record.path = path
    return record


def probe_memo_path(record_path: Path) -> Path:
    """Where a matched-speedup search keeps its probes until its record is written (not *.json:
    a results folder's JSON files are records)."""
    return record_path.with_name(record_path.stem + ".probes")


def run_local(config: RunConfig, registry: Registry | None = None, log=print) -> list[Record]:
    """Every cell of ``config``, one after another in this process."""
    sweep = prepare_sweep(config, registry, log)
    return [run_cell(sweep, plan, log) for plan in sweep.plans]


# --- provenance -----------------------------------------------------------------------------
@functools.cache
def _git_commit() -> str | None:
    """The commit of the harness's own checkout; None (unknown) for an installed package, or
    a package installed inside some other repository. Git's messages never reach the terminal."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=package, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() or None if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != package.parent:
        return None
    return git("rev-parse", "HEAD")


@functools.cache
def _versions() -> dict[str, str | None]:
    def version(package: str) -> str | None:
        try:
            return md.version(package)
        except md.PackageNotFoundError:
            return None

    return {package: version(package) for package in RECORDED_PACKAGES}
