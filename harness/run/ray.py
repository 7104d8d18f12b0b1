"""Sweeps on a Ray cluster: one Ray task per cell (a model × method × target, its evaluations
included), on Ray Core, not a scheduler of our own.

    harness run ... --executor ray                      # a local cluster (ray.init())
    harness run ... --executor ray --ray-address auto   # join a running one (or ray://host:10001)

Order: a model's *first task* draws the calibration set (filling the shared caches), runs
the dense row, and lists the cells with their identities; every other cell depends on its
output (the calibration ids travel as one Ray object), so all cells share the calibration
set exactly. Each cell rebuilds what it needs in its worker (the model from disk, the
evaluations from the caches) and writes its record itself, atomically, into ``--out``:
on a multi-node cluster that directory (and ``--cache-dir``) must be on shared storage.

Identity: a record's file name holds the hash of everything that defines its result
(``Sweep.cell``); a rerun skips cells whose record exists with that hash and reruns the
rest, failed ones included. A cell whose worker dies (OOM, node loss, a crash) is retried
``--retries`` times by Ray, then recorded as failed with the error; the sweep goes on.

Reaching the cluster: an address where nothing answers (or ``auto`` with no cluster running)
fails before Ray's own connection retries start, naming the address and how to start or join a
cluster. A cluster lost mid-sweep (its GCS stops answering) ends the sweep with an error that
says how many cells finished; their records stay in ``--out``, so rerunning the same command
once a cluster is back resumes the sweep.

Resources per cell: ``--ray-gpus`` GPUs (default 1 when the cluster has GPUs and the device
is not "cpu"; a fraction such as 0.25 lets four quality cells share one GPU, which a small
model's zero-shot scoring, bound by lm-eval's per-request Python work, leaves mostly idle; such
a cell's allocations are capped at its fraction of the GPU's memory, ``cap_gpu_memory``),
``--ray-memory-gb`` CPU memory (block-offloaded weights live there), ``--ray-accelerator`` a
GPU type. A cell that measures speed always takes at least one whole GPU, so it never shares
its GPU with another cell, and is pinned to the GPU type the first task ran on, so one table
never mixes GPU types (the GPU model is in every record).
"""

from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

from harness.config import RunConfig
from harness.results import Record, load_record, write_record


def _quiet(*args, **kwargs) -> None:  # workers report through the driver, one line per cell
    pass


def _node_accelerator() -> str | None:
    """The Ray accelerator type of the node this task runs on (e.g. "H100"), if any."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    for info in ray.nodes():
        if info["NodeID"] == node:
            types = [k.split(":", 1)[1] for k in info["Resources"] if k.startswith("accelerator_type:")]
            return types[0] if types else None
    return None


def cap_gpu_memory(gpus: float | None) -> None:
    """A cell given a fraction of a GPU keeps its allocations within that fraction of the GPU's
    memory, so cells sharing a GPU cannot starve one another: on reaching its cap the caching
    allocator frees its own cached blocks before it reports out of memory (which zero-shot
    scoring answers by halving its batch)."""
    import torch

    if gpus and gpus < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpus)


def first_task(config: RunConfig, gpus: float | None = None):
    """Calibration ids, and the manifest of cells (dense rows already run here)."""
    from harness.run.sweep import new_record, prepare_sweep, reusable, run_cell

    cap_gpu_memory(gpus)
    sweep = prepare_sweep(config, log=_quiet)
    cells = []
    for index, plan in enumerate(sweep.plans):
        key, path = sweep.cell(plan)
        if plan.method.kind == "reference":
            run_cell(sweep, plan, _quiet)
        skeleton = new_record(plan, key, sweep.session, sweep.calibration, sweep.eval_spec, sweep.registry,
                              sweep.device, config.seed)
        speed = plan.speed_target is not None or any(e.name == "speed" for e, _ in sweep.prepared)
        cells.append({"index": index, "method": plan.method.name, "label": plan.label, "path": str(path),
                      "done": reusable(path, config, _quiet, sweep.session.identity) is not None, "speed": speed,
                      "skeleton": skeleton.to_json()})
    ids = None if sweep.calibration is None else sweep.calibration.input_ids
    return ids, {"cells": cells, "accelerator": _node_accelerator()}


def cell_task(config: RunConfig, index: int, calibration_ids, _after_first, gpus: float | None = None) -> str:
    """One cell, in a worker given ``gpus`` GPUs; returns its record's path."""
    from harness.run.sweep import prepare_sweep, run_cell

    cap_gpu_memory(gpus)
    sweep = prepare_sweep(config, log=_quiet, calibration_ids=calibration_ids)
    plan = sweep.plans[index]
    run_cell(sweep, plan, _quiet)
    return str(sweep.cell(plan)[1])


def _failed(cell: dict, error: BaseException) -> Record:
    record = Record.from_json(dict(cell["skeleton"]), Path(cell["path"]))
    record.status, record.error = "failed", f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:500]}"
    write_record(Path(cell["path"]), record)
    return record


def _runtime_env() -> dict:
    """What workers on other nodes need from this process's environment: the harness's own
    settings, the Hugging Face ones (cache paths, offline switches) and the import path."""
    keep = [k for k in os.environ if k.startswith(("HARNESS_", "HF_")) or k in ("PYTHONPATH", "TOKENIZERS_PARALLELISM")]
    return {"env_vars": {k: os.environ[k] for k in keep}} if keep else {}


def cell_resources(options: dict, speed: bool, first_accelerator: str | None) -> dict:
    """A cell's Ray options: the sweep's, except that a speed cell gets whole GPUs to itself
    (a timing beside another cell's work is not a measurement) on the first task's GPU type."""
    options = dict(options)
    if speed and options.get("num_gpus"):
        options["num_gpus"] = max(1, math.ceil(options["num_gpus"]))
        if "accelerator_type" not in options and first_accelerator:
            options["accelerator_type"] = first_accelerator  # one GPU type per table
    return options


CONNECT_TIMEOUT_S = 10  # before ray.init: how long the cluster's address has to answer
POLL_S = 5  # while cells run: how often the driver checks that the cluster still answers
LOST_AFTER_S = 15  # a GCS silent this long is lost (well within Ray's reconnect timeout, 60 s by default)
HOW_TO_START = ("start one with `ray start --head --port=6379` (then `ray start --address=HEAD:6379` on the "
                "other nodes) and pass --ray-address HEAD:6379, pass --ray-address auto on a node of a running "
                "cluster, or leave --ray-address out to start a local one")


class RayClusterError(ConnectionError, ValueError):
    """No Ray cluster to run on, or the sweep's cluster went away. Also a ValueError, so that the
    command line prints it as an error rather than a traceback."""


def _answers(address: str, timeout: float) -> bool:
    """Whether something accepts a TCP connection at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def check_address(address: str | None) -> str | None:
    """The host:port that ``ray.init(address)`` will connect to, resolved as Ray resolves it
    (RAY_ADDRESS, ``auto``, the cluster ``ray start`` last started on this node), or None when it
    will start a local cluster. Raises RayClusterError at once when there is no cluster to join
    or nothing answers at its address, where Ray would retry for many minutes."""
    from ray._private.services import canonicalize_bootstrap_address

    if address in (None, "auto") and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    try:
        gcs = address.split("://", 1)[1] if address and "://" in address else canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise RayClusterError(f"no running Ray cluster found for --ray-address {address}: {HOW_TO_START}") from None
    if gcs is None or ":" not in gcs or _answers(gcs, CONNECT_TIMEOUT_S):
        return gcs
    where = f"at {address}" if address else "`ray start` last started on this node (`ray stop` forgets it)"
    raise RayClusterError(f"cannot reach the Ray cluster {where}: nothing answers at {gcs}; {HOW_TO_START}")


def _lost(gcs: str | None) -> bool:
    """Whether the cluster's GCS at ``gcs`` has stopped answering (for ``LOST_AFTER_S``)."""
    deadline = time.monotonic() + LOST_AFTER_S
    while gcs and not _answers(gcs, POLL_S):
        if time.monotonic() >= deadline:
            return True
        time.sleep(1)
    return False


def _wait(pending: list, gcs: str | None, lost) -> tuple[list, list]:
    """``ray.wait`` for one result, checking every ``POLL_S`` that the cluster still answers and
    raising ``lost()`` once it does not: a driver whose cluster is gone would otherwise block until
    Ray ends the process without a word."""
    import ray

    while True:
        finished, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
        if finished:
            return finished, pending
        if _lost(gcs):
            raise lost()


def run_on_ray(config: RunConfig, log=print) -> list[Record]:
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'compression-harness[ray]'") from None
    from tqdm.auto import tqdm

    started_here = not ray.is_initialized()
    if started_here:
        check_address(config.ray_address)
        try:
            ray.init(address=config.ray_address, runtime_env=_runtime_env() or None, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
        except ConnectionError as error:  # something answers there, but not a Ray cluster this Ray can join
            raise RayClusterError(f"{error} (something answers there, but not as a Ray {ray.__version__} cluster); "
                                  f"{HOW_TO_START}") from None
    try:
        gcs = ray.get_runtime_context().gcs_address  # watched while cells run
    except Exception:  # a Ray client connection, which reconnects by itself
        gcs = None
    records, cells = [], None

    def lost() -> RayClusterError:
        done = f"after {len(records)} of {len(cells)} cells" if cells is not None else "before its first task finished"
        return RayClusterError(f"lost the Ray cluster at {config.ray_address or gcs} {done}; the records written so "
                               f"far are kept in {config.out}: rerun the same command once a cluster is up to resume "
                               "(finished cells are skipped)")

    try:
        gpus = config.ray_gpus
        if gpus is None:
            gpus = 1 if config.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        options = {"num_gpus": gpus, "max_retries": config.retries}
        if config.ray_memory_gb:
            options["memory"] = int(config.ray_memory_gb * 2**30)
        if config.ray_accelerator:
            options["accelerator_type"] = config.ray_accelerator
        log(f"ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs; "
            f"{gpus} GPU(s) per cell")
        ids_ref, manifest_ref = ray.remote(first_task).options(num_returns=2, **options).remote(config, gpus)
        try:
            manifest = ray.get(_wait([manifest_ref], gcs, lost)[0][0])  # the dense rows are done
        except ray.exceptions.RayError as error:
            if _lost(gcs):
                raise lost() from error
            raise
        running, remote_cell, cells = {}, ray.remote(cell_task), manifest["cells"]
        for cell in cells:
            if cell["done"]:
                records.append(load_record(Path(cell["path"])))
                log(f"{cell['method']} @ {cell['label']}: done ({Path(cell['path']).name})")
                continue
            cell_options = cell_resources(options, cell["speed"], manifest["accelerator"])
            running[remote_cell.options(**cell_options).remote(
                config, cell["index"], ids_ref, manifest_ref, cell_options.get("num_gpus"))] = cell
        pending = list(running)
        with tqdm(total=len(pending), desc="cells", disable=None, leave=False) as bar:
            while pending:
                finished, pending = _wait(pending, gcs, lost)
                cell = running[finished[0]]
                try:
                    record = load_record(Path(ray.get(finished[0])))
                except ray.exceptions.RayError as error:  # the worker died, retries spent (or the cluster did)
                    if _lost(gcs):
                        raise lost() from error
                    record = _failed(cell, error)
                records.append(record)
                bar.update()
                summary = (f"ratio {record.achieved['ratio']:.4f}, " + ", ".join(
                    f"{k} {v:.3f}" for k, v in record.metrics.items())) if record.ok else f"{record.status}: {record.error}"
                log(f"{cell['method']} @ {cell['label']}: {summary}")
        return records
    finally:
        if started_here:
            ray.shutdown()
