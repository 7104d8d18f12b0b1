"""Paths that used to give a wrong number, or lose work, without a word (issue 19).

Each test here failed before its fix: stale tokens served from a cache keyed on a path,
a misspelt knob run with its default, --save-models skipping an existing record, a
truncated record dropped from a table with exit 0, a raw traceback on Ctrl-C, an
unsupported GGUF refused only after dequantising it, and offline hub retries.
"""

import json
import shutil
import time
from pathlib import Path

import pytest

from harness import hookimpl
from harness.cli import main
from harness.method import Method
from harness.plugins import load_plugins
from harness.run import RunConfig, run


def quiet(*args):
    pass


@pytest.fixture
def config(tiny_model_dir, data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    return RunConfig(model=str(tiny_model_dir), methods=["dense", "wanda"], ratios=[0.3],
                     calibration="wikitext2:4x32", eval_windows=2, eval_length=32,
                     out=tmp_path / "results", data_dir=str(data), cache_dir=tmp_path / "cache")


def shuffle_words(path):
    words = path.read_text().split(" ")
    path.write_text(" ".join(reversed(words)))


def test_new_content_behind_the_same_path_gives_new_tokens_and_numbers(config):
    first = {r.method: r for r in run(config, log=quiet)}
    data = config.data_dir
    shuffle_words(Path(data) / "wikitext2" / "test.joined.txt")
    shuffle_words(Path(data) / "wikitext2" / "train.txt")
    logs = []
    second = {r.method: r for r in run(config, log=logs.append)}
    assert not any("skipped" in line for line in logs)  # new data: new runs, not old records
    for method in ("dense", "wanda"):
        assert second[method].metrics["ppl:wikitext2"] != first[method].metrics["ppl:wikitext2"]
        assert second[method].eval["ppl:wikitext2"]["sha256"] != first[method].eval["ppl:wikitext2"]["sha256"]
    assert second["wanda"].calibration["sha256"] != first["wanda"].calibration["sha256"]


def test_data_dir_from_the_environment_is_part_of_the_identity(config, monkeypatch, tmp_path):
    run(config, log=quiet)  # fills the caches
    other = tmp_path / "other"
    shutil.copytree(config.data_dir, other)
    shuffle_words(other / "wikitext2" / "test.joined.txt")
    config.data_dir = None
    monkeypatch.setenv("HARNESS_DATA_DIR", str(other))
    records = run(config, log=quiet)
    assert all(r.eval["ppl:wikitext2"]["source"].startswith(str(other)) for r in records)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "nonexistent"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from harness.data.hub import hub_unreachable

    hub_unreachable.cache_clear()
    config.out = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError, match="nonexistent/wikitext2"):  # not the cached tokens
        run(config, log=quiet)
    hub_unreachable.cache_clear()


def test_a_misspelt_knob_is_refused_with_the_valid_ones(config):
    config.methods = ["sparsegpt"]
    config.options = {"sparsegpt": {"blocksze": 64}}
    with pytest.raises(ValueError, match=r"no option 'blocksze'.*blocksize \(int, default 128\)"):
        run(config, log=quiet)
    config.options = {"sparsegpt": {"blocksize": "big"}}
    with pytest.raises(ValueError, match="must be int"):
        run(config, log=quiet)
    assert not config.out.exists()


def test_save_models_on_an_existing_record_saves_the_model(config):
    config.methods = ["magnitude"]
    run(config, log=quiet)
    config.save_models = True
    logs = []
    records = run(config, log=logs.append)
    assert any("recomputing it to save the model" in line for line in logs)
    assert records[0].saved_model and Path(records[0].saved_model).is_dir()
    logs.clear()
    run(config, log=logs.append)  # now it is saved: skipped
    assert any("skipped" in line for line in logs)


def test_a_corrupt_record_is_named_everywhere(config, capsys):
    config.methods = ["dense", "magnitude"]
    run(config, log=quiet)
    path = sorted(config.out.glob("*magnitude*.json"))[0]
    path.write_text(path.read_text()[:100])  # truncated, as by a full disk
    boards = config.out.parent / "boards"
    assert main(["leaderboard", str(config.out), "--out", str(boards), "--no-plots"]) == 2
    assert str(path) in capsys.readouterr().err
    assert main(["check", str(config.out), "--against", str(config.out)]) == 2
    assert str(path) in capsys.readouterr().err
    assert main(["leaderboard", str(config.out), "--out", str(boards), "--no-plots", "--skip-corrupt"]) == 0
    assert f"skipped unreadable record {path}" in capsys.readouterr().err
    logs = []
    again = run(config, log=logs.append)
    assert any(str(path) in line and "recomputing" in line for line in logs)
    assert json.loads(path.read_text())["status"] == "ok" and again[1].status == "ok"


class Interrupted(Method):
    name = "interrupted"
    kind = "unstructured"
    needs_calibration = False

    def compress(self, model, calibration, target):
        raise KeyboardInterrupt


class Plugin:
    @hookimpl
    def register_methods(self, register):
        register(Interrupted())


def test_ctrl_c_says_what_was_kept_and_exits_130(config, monkeypatch, capsys):
    registry = load_plugins(extra=[Plugin()])
    monkeypatch.setattr("harness.run.sweep.default_registry", lambda: registry)
    argv = ["run", "--model", config.model, "--methods", "dense,interrupted", "--ratios", "0.3",
            "--calib", "wikitext2:4x32", "--eval-windows", "2", "--eval-length", "32",
            "--out", str(config.out), "--data-dir", config.data_dir, "--cache-dir", str(config.cache_dir)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted; 1 finished record(s) kept" in err and "Traceback" not in err


def test_an_unsupported_gguf_is_refused_from_its_metadata(tmp_path):
    import gguf

    from harness.models import loading as models
    from harness.models.adapters import UnsupportedArchitecture

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    start = time.perf_counter()
    with pytest.raises(UnsupportedArchitecture, match="'mamba' is not supported"):
        models.load_config(str(path))
    assert time.perf_counter() - start < 5


def test_offline_hub_access_fails_fast_with_the_paths_tried(monkeypatch, tmp_path):
    from harness.data.datasets import BUILTIN
    from harness.data.hub import hub_unreachable
    from harness.models import loading as models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    hub_unreachable.cache_clear()
    try:
        start = time.perf_counter()
        with pytest.raises(models.ModelNotFound, match=r"unreachable \(HF_HUB_OFFLINE=1\)"):
            models.resolve("some-org/some-model")
        with pytest.raises(FileNotFoundError, match=r"empty/wikitext2/test.joined.txt.*offline: HF_HUB_OFFLINE=1"):
            BUILTIN[0].locate("test", tmp_path / "empty")
        assert time.perf_counter() - start < 2
    finally:
        hub_unreachable.cache_clear()


def test_a_saved_model_reloads_through_model_dir(config):
    config.methods = ["magnitude"]
    config.save_models = True
    (record,) = run(config, log=quiet)
    config.model, config.methods, config.save_models = record.saved_model, ["dense"], False
    config.out = Path(config.out).parent / "reloaded"
    (reloaded,) = run(config, log=quiet)
    assert reloaded.ok, reloaded.error
    assert reloaded.metrics["ppl:wikitext2"] == pytest.approx(record.metrics["ppl:wikitext2"], rel=1e-5)
