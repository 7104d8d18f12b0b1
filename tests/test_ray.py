"""Sweeps on a real local Ray cluster (2 CPUs): the same records as a sequential run, stable
cell identities, a dead worker recorded as failed and rerun alone, shared caches safe under
concurrent writers, an unreachable cluster refused at once, and a cluster lost mid-sweep
reported and resumed. Marked ``ray`` (deselect with -m "not ray")."""

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import tiny_model

from harness.config import RunConfig
from harness.run import run
from harness.run.sweep import prepare_sweep

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local cluster for the module; workers load the crash and hold plugins through the
    environment."""
    flags = tmp_path_factory.mktemp("flags")
    env = {"HARNESS_PLUGINS": "ray_crash_plugin,ray_hold_plugin", "HARNESS_TEST_CRASH_FLAG": str(flags / "crash"),
           "HARNESS_TEST_CRASH_COUNT": str(flags / "count"), "HARNESS_TEST_HOLD_FLAG": str(flags / "hold"),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from harness.plugins import default_registry

    default_registry.cache_clear()
    # one GPU *resource* (no device behind it) so that fractional --ray-gpus can be scheduled
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    yield flags
    ray.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    default_registry.cache_clear()


def model_dir(root: Path, arch: str, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer

    path = root / arch
    tiny_model(arch).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def grid(model: Path, data_dir, tmp_path, out: str, **extra) -> RunConfig:
    return RunConfig(model=str(model), methods=["dense", "magnitude", "wanda"], ratios=[0.3],
                     calibration="wikitext2:4x32", eval_windows=2, eval_length=32, device="cpu",
                     out=tmp_path / out, data_dir=str(data_dir), cache_dir=tmp_path / "cache", **extra)


def table(records):
    return {(r.method, r.label): (r.achieved["ratio"], r.metrics["ppl:wikitext2"], Path(r.path).name)
            for r in records}


def test_ray_grid_equals_the_sequential_run(cluster, tiny_tokenizer_dir, data_dir, tmp_path):
    """2 architectures × 3 cells: same records (ratios, perplexities, identities) either way."""
    quiet = lambda *a: None  # noqa: E731
    for arch in ("smollm2", "qwen2"):
        model = model_dir(tmp_path / "models", arch, tiny_tokenizer_dir)
        start = time.perf_counter()
        sequential = run(grid(model, data_dir, tmp_path, f"seq-{arch}"), log=quiet)
        middle = time.perf_counter()
        distributed = run(grid(model, data_dir, tmp_path, f"ray-{arch}", executor="ray"), log=quiet)
        print(f"{arch}: sequential {middle - start:.1f} s, ray {time.perf_counter() - middle:.1f} s")
        assert len(distributed) == 3 and all(r.ok for r in distributed)
        assert table(distributed) == table(sequential)


def test_quality_cells_share_a_gpu_and_speed_cells_never_do():
    from harness.run.ray import cell_resources

    shared = {"num_gpus": 0.25, "max_retries": 1}
    assert cell_resources(shared, speed=False, first_accelerator="H200") == shared
    assert cell_resources(shared, speed=True, first_accelerator="H200") == {
        "num_gpus": 1, "max_retries": 1, "accelerator_type": "H200"}
    assert cell_resources({"num_gpus": 2}, speed=True, first_accelerator=None) == {"num_gpus": 2}
    assert cell_resources({"num_gpus": 1.5, "accelerator_type": "H100"}, speed=True, first_accelerator="H200") == {
        "num_gpus": 2, "accelerator_type": "H100"}  # the user's GPU type wins
    assert cell_resources({"num_gpus": 0}, speed=True, first_accelerator="H200") == {"num_gpus": 0}  # CPU cluster


def test_a_cell_on_a_fraction_of_a_gpu_caps_its_memory_there(monkeypatch):
    import torch

    from harness.run.ray import cap_gpu_memory

    caps = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction: caps.append(fraction))
    for gpus in (0.25, 0.125, 1, 2, 0, None):
        cap_gpu_memory(gpus)
    assert caps == [0.25, 0.125]  # whole GPUs (and CPU cells) are not capped
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cap_gpu_memory(0.25)  # a GPU resource with no device behind it (a CPU test cluster)
    assert caps == [0.25, 0.125]


def test_fractional_gpus_give_the_sequential_records(cluster, tiny_model_dir, data_dir, tmp_path):
    """Half a GPU per cell: two cells at a time on the cluster's one GPU, same records."""
    quiet = lambda *a: None  # noqa: E731
    sequential = run(grid(tiny_model_dir, data_dir, tmp_path, "seq"), log=quiet)
    shared = run(grid(tiny_model_dir, data_dir, tmp_path, "half", executor="ray", ray_gpus=0.5), log=quiet)
    assert all(r.ok for r in shared) and table(shared) == table(sequential)


def test_cell_identity_is_stable_and_follows_every_knob(tiny_model_dir, data_dir, tmp_path):
    config = grid(tiny_model_dir, data_dir, tmp_path, "a")
    config.methods = ["sparsegpt"]
    first = prepare_sweep(config, log=lambda *a: None)
    key = first.cell(first.plans[0])[0]
    assert prepare_sweep(config, log=lambda *a: None).cell(first.plans[0])[0] == key  # stable across runs
    config.options = {"sparsegpt": {"blocksize": 64}}
    changed = prepare_sweep(config, log=lambda *a: None)
    assert changed.cell(changed.plans[0])[0] != key  # a knob changes the identity


def test_a_dead_worker_is_recorded_and_rerun_alone(cluster, tiny_model_dir, data_dir, tmp_path):
    flag, count = cluster / "crash", cluster / "count"
    flag.touch()
    config = grid(tiny_model_dir, data_dir, tmp_path, "out", executor="ray", retries=1)
    config.methods = ["dense", "magnitude", "crash"]
    records = {r.method: r for r in run(config, log=lambda *a: None)}
    assert records["crash"].status == "failed" and "Worker" in records["crash"].error, records["crash"].error
    assert records["magnitude"].ok and records["dense"].ok
    assert count.read_text().count("attempt") == 2  # first try + one retry
    kept = {r.method: Path(r.path).stat().st_mtime_ns for r in records.values() if r.ok}
    flag.unlink()
    again = {r.method: r for r in run(config, log=lambda *a: None)}
    assert again["crash"].ok  # the missing cell, and only it, ran again
    assert {m: Path(again[m].path).stat().st_mtime_ns for m in kept} == kept


def _fill(cache: str, barrier) -> None:
    import torch

    from harness.calibration import load_or_make

    def make():
        barrier.wait()  # both writers are inside make() at once
        time.sleep(0.2)
        return {"input_ids": torch.arange(4096).view(2, 2048)}

    load_or_make(Path(cache), "calibration", ("same", "key"), make)


def test_two_writers_of_one_cache_key_leave_one_valid_file(tmp_path):
    import torch

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_fill, args=(str(tmp_path), barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    files = list((tmp_path / "calibration").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary left behind
    assert torch.equal(torch.load(files[0], weights_only=True)["input_ids"], torch.arange(4096).view(2, 2048))


def test_workers_get_the_harness_and_hugging_face_settings(monkeypatch):
    from harness.run.ray import _runtime_env

    for key, value in {"HARNESS_CACHE_DIR": "/c", "HF_DATASETS_OFFLINE": "1", "HF_HOME": "/h",
                       "PYTHONPATH": "/site", "UNRELATED_SECRET": "x"}.items():
        monkeypatch.setenv(key, value)
    env = _runtime_env()["env_vars"]
    assert {"HARNESS_CACHE_DIR", "HF_DATASETS_OFFLINE", "HF_HOME", "PYTHONPATH"} <= set(env)
    assert "UNRELATED_SECRET" not in env


def test_zero_shot_cells_on_shared_gpus_give_the_sequential_records(cluster, tiny_model_dir, data_dir, tmp_path):
    """What the device sweeps do with RAY_GPUS=0.25: lm-eval scoring in Ray workers, two cells
    to a GPU, the same accuracies as the sequential run."""
    import json

    tasks = data_dir.parent / (data_dir.name + "-with-tasks")
    shutil.copytree(data_dir, tasks, dirs_exist_ok=True)
    (tasks / "zeroshot").mkdir(exist_ok=True)
    with open(tasks / "zeroshot" / "piqa.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"goal": f"prune block {i}", "sol1": "the weight", "sol2": "the speed",
                                "label": i % 2}) + "\n")
    quiet = lambda *a: None  # noqa: E731

    def config(out, **extra):
        return grid(tiny_model_dir, tasks, tmp_path, out, evals=["ppl:wikitext2", "zeroshot:piqa"], **extra)

    sequential = run(config("seq"), log=quiet)
    shared = run(config("half", executor="ray", ray_gpus=0.5), log=quiet)
    assert all(r.ok for r in shared)
    accuracy = lambda records: {(r.method, r.label): r.metrics["zeroshot:piqa"] for r in records}  # noqa: E731
    assert accuracy(shared) == accuracy(sequential) and table(shared) == table(sequential)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _kill_session(sid: int) -> None:
    """Every process of session ``sid``: a cluster's ``ray start`` and all it started, workers
    included (they leave its process group, not its session)."""
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_an_unreachable_address_fails_at_once_saying_how_to_start_a_cluster(tmp_path):
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--executor", "ray", "--ray-address", address,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=90)
    assert time.monotonic() - start < 30
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot reach the Ray cluster at {address}" in done.stderr and "ray start --head" in done.stderr


@pytest.mark.parametrize("address, last_started", [("auto", None), (None, "stale")])
def test_no_cluster_to_join_fails_at_once(address, last_started, monkeypatch, tmp_path):
    """``auto`` with no cluster on this node; no address, where ``ray start`` left the address of
    a cluster since gone (ray.init would join it, and retry for many minutes)."""
    from ray._private import services

    stale = f"127.0.0.1:{_free_port()}"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: last_started and stale)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init was reached"))
    with pytest.raises(ValueError, match="ray start --head") as error:
        run(RunConfig(executor="ray", ray_address=address, out=tmp_path), log=lambda *a: None)
    expected = ["no running Ray cluster found for --ray-address auto"] if address else [
        "cannot reach the Ray cluster `ray start` last started", f":{stale.split(':')[1]};", "`ray stop` forgets it"]
    assert all(text in str(error.value) for text in expected), error.value


def test_a_cluster_lost_mid_sweep_is_reported_and_a_rerun_resumes(cluster, tiny_model_dir, data_dir, tmp_path):
    """The driver joins a cluster of its own, which dies while the ``hold`` cell runs: the command
    says how far it got and fails; rerun on another cluster, it runs that cell alone."""
    hold = cluster / "hold"
    held = hold.with_name(hold.name + ".held")
    port, out, log = _free_port(), tmp_path / "out", tmp_path / "driver.log"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live under it
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={temp}"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = None
    try:
        _wait_for(lambda: _listening(port), 60, "the cluster")
        hold.touch()
        # a silent cluster counts as lost after a second here (LOST_AFTER_S in real runs)
        code = ("import sys, harness.run.ray as r; r.POLL_S = r.LOST_AFTER_S = 1; "
                "from harness.cli import main; sys.exit(main(sys.argv[1:]))")
        driver = subprocess.Popen(
            [sys.executable, "-c", code, "run", "--model", str(tiny_model_dir), "--methods", "dense,magnitude,hold",
             "--ratios", "0.3", "--calib", "wikitext2:4x32", "--eval-windows", "2", "--eval-length", "32",
             "--device", "cpu", "--out", str(out), "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
             "--executor", "ray", "--ray-address", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log.open("w"))
        _wait_for(lambda: driver.poll() is not None or held.exists() and len(list(out.glob("*.json"))) == 2, 120,
                  "dense and magnitude done, hold running")
        assert driver.poll() is None, log.read_text()  # still running
        _kill_session(head.pid)  # this cluster only: not the module's
        driver.wait(timeout=60)
        stderr = log.read_text()
        assert driver.returncode == 2, stderr
        assert f"lost the Ray cluster at 127.0.0.1:{port} after 2 of 3 cells" in stderr, stderr
        assert f"kept in {out}: rerun the same command" in stderr
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        _kill_session(head.pid)
        head.wait()
        hold.unlink(missing_ok=True)
        shutil.rmtree(temp, ignore_errors=True)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    config = grid(tiny_model_dir, data_dir, tmp_path, "out", executor="ray")
    config.methods = ["dense", "magnitude", "hold"]
    records = {r.method: r for r in run(config, log=lambda *a: None)}
    assert all(r.ok for r in records.values()) and set(records) == {"dense", "magnitude", "hold"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json") if p.name in kept} == kept  # reused
