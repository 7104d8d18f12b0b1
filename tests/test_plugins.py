"""A plugin from outside this repository's packages: found, listed, and run end to end."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.plugins import MissingRequirement, load_plugins
from harness.run import RunConfig, run

ROOT = Path(__file__).resolve().parents[1]


def readme_plugin_example(marker: str = "plugin-example", source: Path = ROOT / "README.md") -> str:
    """A documented plugin example (README.md, docs/plugins.md), verbatim: the code block after
    ``<!-- marker -->``."""
    text = source.read_text().split(f"<!-- {marker} -->", 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]

PLUGIN_SOURCE = textwrap.dedent('''
    """A third-party method: random unstructured pruning (for the plugin test)."""
    import torch
    from harness import hookimpl
    from harness.method import CompressionReport, Method

    class RandomPrune(Method):
        name = "random-prune"
        kind = "unstructured"
        patterns = ("unstructured",)
        needs_calibration = True
        description = "drops random weights"

        def compress(self, model, calibration, target):
            g = torch.Generator().manual_seed(0)
            seen_blocks = 0
            for block in calibration.sequential(model):   # exercises the shared driver
                seen_blocks += 1
                for lin in block.linears.values():
                    w = lin.weight.data
                    s = target.mask_sparsity(lin)
                    k = int(w.numel() * s)
                    idx = torch.randperm(w.numel(), generator=g)[:k]
                    w.view(-1)[idx] = 0
            return CompressionReport(knobs={"sparsity": s, "blocks": seen_blocks})

    @hookimpl
    def register_methods(register):
        register(RandomPrune())
''')

NEEDS_MORE_SOURCE = textwrap.dedent('''
    """A method whose optimiser package is not installed (as BESA without prodigyopt)."""
    from harness import hookimpl
    from harness.method import Method

    class NeedsMore(Method):
        name = "needs-more"
        kind = "unstructured"
        requires = {"no_such_optimiser_xyz": "no-such-optimiser"}

        def compress(self, model, calibration, target):
            import no_such_optimiser_xyz  # noqa: F401  (where a method would import it)

    @hookimpl
    def register_methods(register):
        register(NeedsMore())
''')


def install_fake_distribution(root: Path, dist: str, module: str, source: str) -> None:
    """What `pip install` leaves behind: a module and a dist-info with an entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[harness]\n{module} = {module}\n")


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    install_fake_distribution(root, "harness_random_prune", "harness_random_prune", PLUGIN_SOURCE)
    install_fake_distribution(root, "harness_broken", "harness_broken", "raise ImportError('no such kernel')\n")
    install_fake_distribution(root, "harness_needs_more", "harness_needs_more", NEEDS_MORE_SOURCE)
    install_fake_distribution(root, "my_harness_plugin", "my_harness_plugin", readme_plugin_example())
    install_fake_distribution(root, "my_harness_eval", "my_harness_eval",
                              readme_plugin_example("evaluation-example", ROOT / "docs" / "plugins.md"))
    monkeypatch.syspath_prepend(str(root))
    return root


def test_third_party_plugin_is_listed_and_broken_one_reported(third_party):
    env = {**os.environ, "PYTHONPATH": f"{third_party}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plugins"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 1, out.stderr  # the broken plugin fails the listing, as a preflight
    assert "harness_random_prune==0.3" in out.stdout
    assert "random-prune" in out.stdout
    assert "harness_broken" in out.stdout and "FAILED: ImportError: no such kernel" in out.stdout
    for builtin in ("dense", "magnitude", "wikitext2", "markdown"):
        assert builtin in out.stdout


def test_builtins_register_through_entry_points_like_third_parties(third_party):
    registry = load_plugins()
    origins = {p.name: p.origin for p in registry.plugins}
    assert origins["magnitude"].startswith("compression-harness==")
    assert origins["harness_random_prune"].startswith("harness_random_prune==0.3")
    assert {"dense", "magnitude", "random-prune"} <= set(registry.methods)


def test_third_party_method_runs_end_to_end(third_party, tiny_model_dir, data_dir, tmp_path):
    registry = load_plugins()
    records = run(RunConfig(model=str(tiny_model_dir), methods=["dense", "random-prune"], ratios=[0.4],
                            calibration="wikitext2:4x32", eval_windows=2, eval_length=32,
                            out=tmp_path / "results", data_dir=str(data_dir), cache_dir=tmp_path / "cache"),
                  registry=registry, log=lambda *a: None)
    assert [r.status for r in records] == ["ok", "ok"]
    rp = records[1]
    assert rp.method == "random-prune" and rp.report["knobs"]["blocks"] == 2
    assert abs(rp.achieved["ratio"] - 0.4) <= 0.005
    assert rp.provenance["plugin"].startswith("harness_random_prune==0.3")
    assert rp.metrics["ppl:wikitext2"] > 1


def test_readme_plugin_example_works(third_party, tiny_model_dir, data_dir, tmp_path):
    registry = load_plugins()
    assert "mlp-only" in registry.methods
    records = run(RunConfig(model=str(tiny_model_dir), methods=["mlp-only"], ratios=[0.3],
                            calibration="wikitext2:4x32", eval_windows=1, eval_length=32,
                            out=tmp_path / "results", data_dir=str(data_dir), cache_dir=tmp_path / "cache"),
                  registry=registry, log=lambda *a: None)
    (record,) = records
    assert record.status == "ok", record.error
    assert abs(record.achieved["ratio"] - 0.3) <= 0.005
    assert all(".up" in k or ".gate" in k or ".down" in k for k in record.report["layer_ratios"])


def test_readme_evaluation_example_works(third_party, tiny_model_dir, data_dir, tmp_path):
    from harness.report.leaderboard import write_leaderboards

    registry = load_plugins()
    assert "agree" in registry.evaluations
    records = run(RunConfig(model=str(tiny_model_dir), methods=["dense", "magnitude"], ratios=[0.3, 0.6],
                            calibration="wikitext2:4x32", evals=["ppl:wikitext2", "agree:64"], eval_windows=1,
                            eval_length=32, out=tmp_path / "results", data_dir=str(data_dir),
                            cache_dir=tmp_path / "cache"),
                  registry=registry, log=lambda *a: None)
    dense, light, heavy = records
    assert dense.metrics["agree:top1"] == 1.0 and dense.eval["agree"] == {"tokens": 64}
    assert heavy.metrics["agree:top1"] < 1.0 and heavy.higher_is_better == {"ppl:wikitext2": False, "agree:top1": True}
    write_leaderboards(tmp_path / "results", tmp_path / "boards", sort="agree:top1", registry=registry, plots=False)
    board = next(p for p in (tmp_path / "boards").glob("*.md") if p.name != "index.md").read_text()
    assert "agree:top1" in board
    # the header names every evaluation, a plugin's with what its record says it ran on
    assert "evaluation: ppl:wikitext2: 1/" in board and "; agree (tokens 64)" in board


def test_missing_requirement_is_listed_and_refused_before_any_cell(third_party, tiny_model_dir, data_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{third_party}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "plugins"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert "MISSING: no-such-optimiser (pip install no-such-optimiser)" in out.stdout
    assert "besa" in out.stdout and "MISSING: prodigyopt" not in out.stdout  # installed here
    results = tmp_path / "results"
    with pytest.raises(MissingRequirement, match="method 'needs-more' needs no-such-optimiser.*pip install"):
        run(RunConfig(model=str(tiny_model_dir), methods=["dense", "needs-more"], ratios=[0.4],
                      calibration="wikitext2:4x32", eval_windows=2, eval_length=32, out=results,
                      data_dir=str(data_dir), cache_dir=tmp_path / "cache"),
            registry=load_plugins(), log=lambda *a: None)
    assert not list(results.glob("*.json"))  # refused before the dense cell, not after it


def test_evaluation_requirements_are_checked(monkeypatch):
    from harness.evaluations.zeroshot import ZeroShot
    from harness.plugins import missing_requirements

    assert missing_requirements(ZeroShot()) == []  # lm-eval is a dependency of the project
    monkeypatch.setattr(ZeroShot, "requires", {"lm_eval_not_here": "lm-eval"})
    assert missing_requirements(ZeroShot()) == ["lm-eval"]


def test_plugins_lists_the_model_types_each_method_takes(capsys):
    """What a method's own check refuses is not listed: SliceGPT takes no Gemma."""
    from harness.cli import main

    main(["plugins"])
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("method ")}
    slicegpt = lines["slicegpt"].split("architectures=")[1].split()[0].split(",")
    wanda = lines["wanda"].split("architectures=")[1].split()[0].split(",")
    assert "llama" in slicegpt and "gemma2" not in slicegpt and "gemma3_text" not in slicegpt
    assert {"llama", "qwen2", "phi3", "phi", "gemma2", "gemma3_text"} <= set(wanda)
