"""Zero-shot accuracy through lm-evaluation-harness, on the in-memory compressed model.

The model is wrapped in lm-eval's own Hugging Face class (``HFLM``); scoring is lm-eval's,
not ours. The pruning papers report PIQA, ARC-Easy, ARC-Challenge, HellaSwag, WinoGrande, BoolQ
and OpenBookQA and their average. Every record keeps lm-eval's ``acc`` and ``acc_norm`` per
task (and ``acc:avg``, the mean acc); ``zeroshot:TASK`` is the figure the SliceGPT and
IntraSlice papers print, acc_norm where lm-eval defines it and acc elsewhere (SliceGPT's
``run_lm_eval.py`` takes ``acc_norm`` if present, else ``acc``), and ``zeroshot:avg`` their mean.

Offline: when ``DATA_DIR/zeroshot/<task>.jsonl`` exists (``--data-dir`` or
``HARNESS_DATA_DIR``), the task runs from it: lm-eval's own task config for that task, with
its data source pointed at the local file (rows in the hub dataset's format, the split lm-eval
evaluates). Otherwise lm-eval loads the task from the hub as usual.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from pathlib import Path

import torch

from harness import hookimpl
from harness.data.datasets import DATA_DIR_ENV
from harness.evaluation import EvalContext, EvalResult, Evaluator, Prepared

GPU_BATCH = 64  # zero-shot requests per forward pass on a GPU


def local_task_file(task: str, data_dir: str | Path | None) -> Path | None:
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        return None
    for suffix in (".jsonl", ".json"):
        path = Path(data_dir) / "zeroshot" / f"{task}{suffix}"
        if path.is_file():
            return path
    return None


def task_config(task: str, data_dir: str | Path | None):
    """lm-eval's config for ``task``, reading a local file when there is one; else the name."""
    path = local_task_file(task, data_dir)
    if path is None:
        return task
    entry = _task_manager().task_index.get(task)
    yaml_path = None if entry is None else getattr(entry, "yaml_path", None) or entry["yaml_path"]
    if yaml_path is None:
        raise ValueError(f"lm-eval has no task {task!r}")
    try:  # lm-eval ≥ 0.4.10
        from lm_eval.tasks._yaml_loader import load_yaml

        config = load_yaml(yaml_path, resolve_func=True)
    except ImportError:  # earlier 0.4 releases
        from lm_eval.utils import load_yaml_config

        config = load_yaml_config(yaml_path=str(yaml_path), mode="full")
    # lm-eval scores the test split when the task has one, else validation: the file is that
    # split, and the others are switched off.
    split_key = "test_split" if config.get("test_split") else "validation_split"
    split = config[split_key]
    config.update(task=task, dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": {split: str(path)}},
                  training_split=None, fewshot_split=None, test_split=None, validation_split=None)
    config[split_key] = split
    config.pop("group", None)
    return config


@functools.cache
def _task_manager():
    """lm-eval's task index (building it scans every task YAML: do it once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


@torch.no_grad()
def evaluate_zeroshot(model: torch.nn.Module, tokenizer, tasks: list[str], device: torch.device,
                      limit: int | None = None, batch_size: int = 8,
                      data_dir: str | Path | None = None) -> tuple[dict[str, float], dict]:
    """(metrics, details): "acc:piqa", "acc_norm:piqa", "zeroshot:piqa", ..., "acc:avg",
    "zeroshot:avg"; and what ran, from where."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    configs = [task_config(t, data_dir) for t in tasks]
    model.to(device)  # lm-eval runs the whole model on one device
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
        with _quiet_git_lookup():
            out = lm_eval.simple_evaluate(model=lm, tasks=configs, limit=limit, log_samples=False,
                                          bootstrap_iters=0, verbosity="ERROR", task_manager=_task_manager())
    finally:
        model.to("cpu")
    metrics, accs, papers = {}, [], []
    for task in tasks:
        result = out["results"][task]
        for name in ("acc", "acc_norm"):
            value = result.get(f"{name},none")
            if value is not None:
                metrics[f"{name}:{task}"] = float(value)
        accs.append(metrics.get(f"acc:{task}"))
        paper = metrics.get(f"acc_norm:{task}", metrics.get(f"acc:{task}"))
        if paper is not None:
            metrics[f"zeroshot:{task}"] = paper
        papers.append(paper)
    if accs and None not in accs:
        metrics["acc:avg"] = sum(accs) / len(accs)
    if papers and None not in papers:
        metrics["zeroshot:avg"] = sum(papers) / len(papers)
    details = {"lm_eval": getattr(lm_eval, "__version__", None) or _version("lm_eval"), "limit": limit,
               "tasks": {t: (str(local_task_file(t, data_dir)) if local_task_file(t, data_dir) else "hub")
                         for t in tasks}}
    return metrics, details


@contextlib.contextmanager
def _quiet_git_lookup():
    """lm-eval notes the working directory's git commit by running ``git describe`` with its
    stderr on the terminal, so outside a checkout every evaluation printed git's "fatal: not a
    git repository". The harness records its own commit; lm-eval's lookup runs quietly here."""
    import lm_eval.evaluator as evaluator

    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:  # an lm-eval that does not look it up
        yield
        return
    evaluator.get_git_commit_hash = _git_describe
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def _git_describe() -> str | None:
    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _version(package: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(package.replace("_", "-"))
    except md.PackageNotFoundError:
        return None


class ZeroShot(Evaluator):
    """``zeroshot:TASK[,TASK...]``: lm-eval's accuracy on each task, and their average."""

    name = "zeroshot"
    description = ("zero-shot accuracy through lm-evaluation-harness (acc, acc_norm, and the papers' "
                   "acc_norm-else-acc per task and average)")
    metric_prefixes = ("acc", "acc_norm")
    requires = {"lm_eval": "lm-eval"}

    def prepare(self, args: list[str], context: EvalContext) -> Prepared:
        from harness.data.datasets import file_fingerprint

        files = {task: local_task_file(task, context.config.data_dir) for task in args}
        spec = {"tasks": list(args), "limit": context.config.zeroshot_limit, "lm_eval": _version("lm_eval"),
                "data": {task: file_fingerprint(path) if path else "hub" for task, path in files.items()}}
        return Prepared({"zeroshot": spec}, list(args))

    def describe(self, key: str, spec: dict, details: dict | None = None) -> str:
        lm_eval = spec.get("lm_eval") or (details or {}).get("lm_eval")
        return (f"zero-shot (lm-eval {lm_eval}): {', '.join(spec['tasks'])}"
                + (f", first {spec['limit']} examples each (subsampled)" if spec.get("limit") else ""))

    def evaluate(self, prepared: Prepared, model, target, context: EvalContext) -> EvalResult:
        config = context.config
        # ~66k short scoring requests for the 7 tasks: a GPU wants far larger batches than the
        # calibration's (lm-eval pads per batch; scores do not depend on the batch size)
        batch = max(config.batch_size, GPU_BATCH) if context.device.type == "cuda" else config.batch_size
        while True:
            try:
                metrics, details = evaluate_zeroshot(model.model, context.tokenizer(), prepared.state,
                                                     context.device, config.zeroshot_limit, batch, config.data_dir)
                break
            except torch.cuda.OutOfMemoryError:
                # A batch's log-probabilities are batch × length × vocabulary values (SmolLM2's
                # 49,152-token vocabulary, 64 long requests: one 7.56 GiB allocation): halve it.
                # lm-eval scores its longest requests first, so a batch that fits the first one
                # fits them all, and a retry fails fast.
                if batch == 1:
                    raise
                batch //= 2
                torch.cuda.empty_cache()
        details["batch_size"] = batch
        return EvalResult(metrics, details)


@hookimpl
def register_evaluations(register):
    register(ZeroShot())
