"""Gemma-2 and Gemma-3: an architecture added as one adapter row.

Four norms per block (two of them on sublayer *outputs*), GQA, tied embeddings scaled by
√d, sliding-window and global layers (Gemma-3: with their own rotary tables), logit
soft-capping (Gemma-2). The driver, perplexity and speed step are tested on them with every
other architecture (the ``any_arch`` fixture); here, every method either compresses them
to the target or refuses with a message that names what the architecture lacks.
"""

import pytest
from conftest import PARTIAL, synthetic_calibration, tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter, UnsupportedArchitecture
from harness.plugins import default_registry
from harness.targets import count_parameters, measure_ratio

WORKS = ["magnitude", "wanda", "sparsegpt", "besa", "intraslice-mlp"]
REFUSES = {
    "slicegpt": "normalises sublayer outputs before the residual add",
    "intraslice": "attention logit soft-capping",
    "intraslice-uniform": "sliding-window layers",
    "intraslice-vo": "per-layer-type rotary tables",
}


@pytest.mark.parametrize("name", PARTIAL)
@pytest.mark.parametrize("method", WORKS)
def test_methods_that_support_gemma_hit_the_target(method, name):
    adapter = ModelAdapter(tiny_model(name))
    dense = count_parameters(adapter)
    report = default_registry().method(method).compress(adapter, synthetic_calibration(), Target(0.3))
    assert report is not None
    unit = 3 * adapter.hidden_size * len(adapter.blocks) / dense.blocks if method == "intraslice-mlp" else 0
    assert abs(measure_ratio(dense, adapter).ratio - 0.3) <= 0.005 + 1 / 64 + unit


@pytest.mark.parametrize("name", PARTIAL)
@pytest.mark.parametrize("method, reason", REFUSES.items())
def test_methods_that_do_not_refuse_naming_what_is_missing(method, reason, name):
    adapter = ModelAdapter(tiny_model(name))
    with pytest.raises(UnsupportedArchitecture, match=reason):
        default_registry().method(method).compress(adapter, synthetic_calibration(), Target(0.3))


def test_the_runner_refuses_before_loading_weights(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    from harness.run import RunConfig, run

    model = tiny_model("gemma2")
    model.save_pretrained(tmp_path / "gemma")
    (tmp_path / "gemma" / "tokenizer.json").write_bytes((tiny_model_dir / "tokenizer.json").read_bytes())

    def no_loading(*args, **kwargs):
        raise AssertionError("refused only after loading the weights")

    monkeypatch.setattr("harness.models.loading.load_model", no_loading)
    with pytest.raises(UnsupportedArchitecture, match="slicegpt needs blocks whose residual stream"):
        run(RunConfig(model=str(tmp_path / "gemma"), methods=["dense", "slicegpt"], ratios=[0.3],
                      calibration="wikitext2:4x32", out=tmp_path / "out", data_dir=str(data_dir),
                      cache_dir=tmp_path / "cache"), log=lambda *a: None)
    assert not (tmp_path / "out").exists()
