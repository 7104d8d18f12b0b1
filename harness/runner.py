"""The Python API that ``harness run`` is a thin layer over.

    from harness.runner import RunConfig, run
    records = run(RunConfig(methods=["magnitude"], ratios=[0.2, 0.3], out="results"))

``run`` validates the whole request before doing any work (unknown method, ratio outside
(0, 1), a pattern or architecture a method does not support, an unknown dataset: one
clear error, nothing written), then for each (method, target): copies the dense model,
compresses it, measures the achieved ratio, evaluates, and writes one record.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import resource
import subprocess
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import harness
from harness import models
from harness.adapters import ModelAdapter, architecture_for
from harness.calibration import Calibration, CalibrationSpec, draw_windows, load_or_make, tokenize
from harness.export import save_compressed
from harness.method import Method, Target, implied_ratio
from harness.perplexity import eval_windows, perplexity
from harness.plugins import Registry, default_registry
from harness.results import (
    SCHEMA_VERSION,
    completed,
    read_record,
    record_path,
    run_key,
    write_json_atomic,
)
from harness.speedmatch import SpeedTarget, probe_speed, search_ratio
from harness.targets import (
    check_pattern,
    check_ratio,
    count_parameters,
    measure_ratio,
    validate_ratio,
)
from harness.throughput import SpeedSpec, measure_model

EVAL_KINDS = ("ppl", "zeroshot", "speed")
DEFAULT_CACHE = Path(os.environ.get("HARNESS_CACHE_DIR", Path.home() / ".cache" / "compression-harness"))


@dataclass
class RunConfig:
    model: str = models.DEFAULT_MODEL
    methods: list[str] = field(default_factory=lambda: ["dense", "magnitude"])
    ratios: list[float] | None = None  # None: 0.2, 0.3 (N:M patterns imply their own)
    pattern: str = "unstructured"
    calibration: str = "wikitext2:128x2048"
    seed: int = 0
    evals: list[str] = field(default_factory=lambda: ["ppl:wikitext2"])
    eval_windows: int | None = None  # limit on perplexity windows (None: the full protocol)
    zeroshot_limit: int | None = None  # examples per zero-shot task (None: all; recorded)
    eval_length: int | None = None  # window length (None: model context capped at 2048)
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
    sparse_kernels: bool = True  # 2:4 weights on torch's semi-structured kernels for speed


@dataclass
class Plan:
    method: Method
    target: Target
    matched: bool = True  # False: a native-knob run, its ratio measured but not enforced
    speed_target: SpeedTarget | None = None  # matched-speedup mode: the ratio is searched

    @property
    def label(self) -> str:
        if self.speed_target:
            return f"s={self.speed_target.speedup:g}"
        if self.matched:
            return self.target.label()
        knob = self.method.native_knob
        return f"{knob}={self.target.options[knob]:g}"


def parse_evals(items: list[str]) -> list[tuple[str, str]]:
    """["ppl:wikitext2,c4"] → [("ppl", "wikitext2"), ("ppl", "c4")]."""
    evals, kind = [], None
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            if ":" in part:
                kind, part = part.split(":", 1)
            if kind not in EVAL_KINDS:
                raise ValueError(f"unknown evaluation {part if kind is None else kind!r}; "
                                 f"use one of {', '.join(k + ':DATASET' for k in EVAL_KINDS)}")
            evals.append((kind, part))
    return evals


def plan_runs(config: RunConfig, registry: Registry) -> list[Plan]:
    """Check the request against the registry; return the runs it asks for."""
    implied = implied_ratio(config.pattern)
    if list(config.methods) == ["all"]:  # every installed method that can do the pattern
        names = [n for n, m in registry.methods.items() if not m.ablation_of
                 and (m.kind == "reference" or config.pattern in m.patterns)]
    else:
        names = list(dict.fromkeys(config.methods))
    methods = sorted((registry.method(name) for name in names), key=lambda m: m.kind != "reference")
    speed_target = SpeedTarget.parse(config.match, config.match_phase) if config.match else None
    if speed_target and config.ratios:
        raise ValueError("--match searches the ratio; drop --ratios")
    if implied is not None:
        if any(abs(r - implied) > 1e-9 for r in config.ratios or ()):
            raise ValueError(f"pattern {config.pattern} fixes the ratio at {implied:g}; drop --ratios")
        ratios = [implied]
    else:
        ratios = [validate_ratio(float(r)) for r in (config.ratios if config.ratios is not None else [0.2, 0.3])]
        if not ratios:
            raise ValueError("no ratios given")
    plans = []
    for method in methods:
        options = config.options.get(method.name, {})
        method.check_options(options)  # a misspelt knob is refused, not silently ignored
        if method.kind == "reference":  # dense: one row, nothing removed
            plans.append(Plan(method, Target(0.0, "unstructured", options)))
            continue
        if config.pattern not in method.patterns:
            raise ValueError(f"method {method.name!r} does not support pattern {config.pattern!r} "
                             f"(it supports: {', '.join(method.patterns)})")
        if method.native_knob and method.native_knob in options:
            plans.append(Plan(method, Target(0.0, config.pattern, options), matched=False))
            continue
        if speed_target:  # structured shapes in multiples of 8 unless the user says otherwise
            if method.kind == "structured":
                options = {"align": 8, **options}
            plans.append(Plan(method, Target(implied or 0.0, config.pattern, options),
                              speed_target=speed_target))
            continue
        for ratio in ratios:
            plans.append(Plan(method, Target(ratio, config.pattern, options)))
    unknown = set(config.options) - {m.name for m in methods}
    if unknown:
        raise ValueError(f"options given for methods not in this run: {', '.join(sorted(unknown))}")
    return plans


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions(method: Method, registry: Registry) -> dict:
    import transformers

    plugin = next((p for p in registry.plugins if method.name in p.methods), None)
    return {"harness": harness.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "plugin": plugin.origin if plugin else None}


class Unreachable(Exception):
    """A method's shapes cannot reach the target speedup at any ratio it can produce."""


def run(config: RunConfig, registry: Registry | None = None, log=print) -> list[dict]:
    """Run every (method, target) of ``config``; return the records (existing ones included)."""
    registry = registry or default_registry()
    plans = plan_runs(config, registry)
    evals = parse_evals(config.evals)
    zeroshot_tasks = [name for kind, name in evals if kind == "zeroshot"]
    speed_specs = [SpeedSpec.parse(name) for kind, name in evals if kind == "speed"]
    if config.match:  # the matched phase is always measured on the final model
        phase = SpeedSpec.parse(config.match_phase)
        speed_specs = [phase] + [s for s in speed_specs if s != phase]
    evals = [(kind, name) for kind, name in evals if kind not in ("zeroshot", "speed")]
    for _, name in evals:
        registry.dataset(name)
    calib_spec = CalibrationSpec.parse(config.calibration, config.seed)
    registry.dataset(calib_spec.dataset)
    device = resolve_device(config.device)
    dtype = models.pick_dtype(config.dtype, str(device))
    models.resolve(config.model)  # a missing model fails before anything is loaded
    out = Path(config.out)
    cache = Path(config.cache_dir) if config.cache_dir else None

    model_config = models.load_config(config.model)
    family = architecture_for(model_config.model_type).family
    for plan in plans:
        if plan.method.architectures is not None and family not in plan.method.architectures:
            raise ValueError(f"method {plan.method.name!r} does not support the {family!r} "
                             f"architecture (it supports: {', '.join(plan.method.architectures)})")
    context = getattr(model_config, "max_position_embeddings", 2048) or 2048
    eval_length = config.eval_length or min(context, 2048)

    @functools.cache
    def tokenizer():  # only when the token cache misses
        return models.load_tokenizer(config.model)

    @functools.cache
    def dense_model():  # only when some run has no record yet
        log(f"loading {config.model} ({dtype}) ...")
        model = models.load_model(config.model, dtype)[0]
        return model, count_parameters(ModelAdapter(model))

    # --- shared inputs: one calibration set and tokenised eval texts for every run ---
    calibration = None
    if any(p.method.needs_calibration for p in plans):
        dataset = registry.dataset(calib_spec.dataset)
        # Resolved now, before the cache: a cache is keyed on the file's content and the
        # tokenizer's, so other data behind the same path (or none) is never served stale.
        source = dataset.locate("calibration", config.data_dir)

        def make_calibration():
            ids = tokenize(tokenizer(), dataset.read(source))
            return {"input_ids": draw_windows(ids, calib_spec.n, calib_spec.length, calib_spec.seed)}

        drawn = load_or_make(cache, "calibration", (models.fingerprint(config.model), source.identity,
                                                    str(calib_spec)), make_calibration)
        calibration = Calibration(drawn["input_ids"], calib_spec, source.path, device, config.batch_size,
                                  source.sha256)
        log(f"calibration: {calib_spec} from {source.path}")

    eval_inputs = {}
    for kind, name in evals:
        dataset = registry.dataset(name)
        source = dataset.locate("test", config.data_dir)

        def make_eval(dataset=dataset, source=source):
            return {"token_ids": tokenize(tokenizer(), dataset.read(source))}

        tokens = load_or_make(cache, "eval", (models.fingerprint(config.model), source.identity), make_eval)
        windows, total = eval_windows(tokens["token_ids"], eval_length, config.eval_windows,
                                      dataset.max_eval_windows)
        eval_inputs[(kind, name)] = (windows, total, source)
        note = f" (subsampled: {windows.shape[0]} of {total} windows)" if windows.shape[0] < total else ""
        log(f"eval {kind}:{name}: {windows.shape[0]} windows × {eval_length} tokens{note}")

    eval_spec = {f"{k}:{n}": {"windows": w.shape[0], "windows_total": t, "window_length": eval_length,
                              **s.describe()} for (k, n), (w, t, s) in eval_inputs.items()}
    if zeroshot_tasks:
        eval_spec["zeroshot"] = {"tasks": zeroshot_tasks, "limit": config.zeroshot_limit}
    for spec in speed_specs:
        eval_spec[f"speed:{spec.label}"] = {"batch": spec.batch, "length": spec.length,
                                            "sparse_kernels": config.sparse_kernels}

    @functools.cache
    def dense_speed():  # dense throughput, measured once in this process: speedups are same-run ratios
        return measure_model(ModelAdapter(copy.deepcopy(dense_model()[0])), "unstructured", speed_specs, device)

    def search(plan: Plan) -> dict:
        """Matched-speedup mode: the ratio whose shape probe reaches the target speedup."""
        goal = plan.speed_target
        base = dense_speed()[goal.spec.label]["tokens_per_s"]

        def speedup_at(ratio: float) -> float:
            target = Target(ratio, plan.target.pattern, plan.target.options)
            _, results = probe_speed(plan.method, lambda: copy.deepcopy(dense_model()[0]), target,
                                     [goal.spec], device, config.sparse_kernels)
            return results[goal.spec.label]["tokens_per_s"] / base

        log(f"{plan.method.name}: searching the ratio for {goal.label} (dense {base:.1f} tokens/s)")
        return search_ratio(speedup_at, goal, implied_ratio(plan.target.pattern), log=log).to_dict()

    records = []
    for plan in plans:
        method, target = plan.method, plan.target
        key = run_key(model=config.model, method=method.name, target=asdict(target), matched=plan.matched, dtype=str(dtype),
                      **({"speed_target": plan.speed_target.label} if plan.speed_target else {}),
                      calibration=str(calib_spec) if method.needs_calibration else None,
                      evals=eval_spec, schema=SCHEMA_VERSION)
        label = plan.label
        path = record_path(out, config.model, method.name, label, key)
        existing = read_record(path) if path.exists() else None
        if path.exists() and existing is None:
            log(f"{method.name} @ {label}: {path} is unreadable (truncated or corrupt); recomputing it")
        elif completed(path) and not config.overwrite:
            saved = existing.get("saved_model")
            if config.save_models and not (saved and Path(saved).is_dir()):
                log(f"{method.name} @ {label}: record exists but its model was not saved; "
                    "recomputing it to save the model")
            else:
                log(f"{method.name} @ {label}: already done ({path.name}), skipped")
                records.append(existing)
                continue
        log(f"{method.name} @ {label}: compressing ...")
        record = {
            "schema": SCHEMA_VERSION, "key": key, "status": "ok", "error": None,
            "model": config.model, "architecture": family, "dtype": str(dtype).removeprefix("torch."),
            "method": method.name, "method_kind": method.kind, "target": asdict(target),
            "mode": ("matched-speedup" if plan.speed_target else "matched-ratio") if plan.matched
            else f"native {method.native_knob}", "label": label,
            "calibration": calibration.describe() if calibration and method.needs_calibration else None,
            "eval": eval_spec, "metrics": {}, "timings": {},
            "provenance": {**_versions(method, registry), "git_commit": _git_commit(),
                           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
                           "seed": config.seed, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        }
        try:
            pristine, dense_count = dense_model()
            if plan.speed_target and method.kind != "reference":
                found = search(plan)
                record["match"] = found
                if not found["reached"]:
                    raise Unreachable(f"best {found['speedup']:.3f}x at r={found['ratio']:.4f} "
                                      f"(target {plan.speed_target.label})")
                target = Target(found["ratio"], target.pattern, target.options)
                record["target"] = asdict(target)
            small = sum(p.numel() for p in pristine.parameters()) < 3e9  # else reload: no 2 copies
            model = copy.deepcopy(pristine) if small else models.load_model(config.model, dtype)[0]
            adapter = ModelAdapter(model)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            report = method.compress(adapter, calibration, target)
            record["timings"]["compress_s"] = time.perf_counter() - start
            record["report"] = asdict(report)
            measured = measure_ratio(dense_count, adapter)
            record["achieved"] = measured.to_dict()
            if plan.matched and method.kind != "reference" and target.n_m:
                check_pattern(adapter, target.n_m)  # N:M: the pattern is the target, r is reported
            elif plan.matched and method.kind != "reference":
                check_ratio(measured.ratio, target.ratio, dense=dense_count)
            start = time.perf_counter()
            for (kind, name), (windows, total, _) in eval_inputs.items():
                result = perplexity(adapter, windows, device, config.batch_size, total)
                record["metrics"][f"{kind}:{name}"] = result.perplexity
            if zeroshot_tasks:
                from harness.zeroshot import evaluate_zeroshot

                scores, details = evaluate_zeroshot(model, tokenizer(), zeroshot_tasks, device,
                                                    config.zeroshot_limit, config.batch_size, config.data_dir)
                record["metrics"].update(scores)
                record["eval"] = {**record["eval"], "zeroshot": {**eval_spec["zeroshot"], **details}}
            record["timings"]["eval_s"] = time.perf_counter() - start
            if config.save_models:
                saved = save_compressed(model, tokenizer(), out / "models" / path.stem,
                                        {"method": method.name, "target": label})
                record["saved_model"] = str(saved)
            if speed_specs:
                # one-way: a 2:4 model moves to sparse kernels; it is not used afterwards
                record["speed"] = measure_model(adapter, target.pattern, speed_specs, device, config.sparse_kernels)
                for spec_label, result in record["speed"].items():
                    result["dense_tokens_per_s"] = dense_speed()[spec_label]["tokens_per_s"]
                    result["speedup"] = result["tokens_per_s"] / result["dense_tokens_per_s"]
                    record["metrics"][f"speed:{spec_label}"] = result["tokens_per_s"]
                    record["metrics"][f"speedup:{spec_label}"] = result["speedup"]
            log(f"{method.name} @ {label}: ratio {measured.ratio:.4f}, "
                + ", ".join(f"{k} {v:.3f}" for k, v in record["metrics"].items()))
        except Unreachable as error:  # reported, with the best speedup it reached
            record["status"] = "unreachable"
            record["error"] = str(error)
            log(f"{method.name} @ {label}: cannot reach the target speed: {error}")
        except Exception as error:  # one failed run must not lose the others
            record["status"] = "failed"
            record["error"] = f"{type(error).__name__}: {error}"
            record["traceback"] = traceback.format_exc(limit=8)
            log(f"{method.name} @ {label}: FAILED: {record['error']}")
        record["memory"] = {
            "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "peak_process_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        write_json_atomic(path, record)
        records.append(record)
        del record
    return records
