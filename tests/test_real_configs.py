"""Each adapter row on a real checkpoint's config (tests/configs/, shrunk by ``real_tiny_config``):
the fields a tiny hand-made config leaves at defaults (head_dim ≠ hidden / heads, sliding windows,
soft-capping, q/k norms, biases, Llama-3 rope scaling, partial rotary, tied or untied heads) are
the real ones. Through the driver: every method that claims the architecture meets its target,
perplexity runs, the serving step runs on each kind of compressed model, an export reloads to the
same perplexity; every method that
does not claim it refuses with its reason, as ``harness plugins`` says."""

from __future__ import annotations

import pytest
from conftest import REAL_CONFIGS, real_tiny_model

from harness.models.adapters import UnsupportedArchitecture, architecture_for
from harness.plugins import load_plugins
from harness.run import RunConfig, run

#: Methods this test leaves to their own tests: SLEB's search is quadratic in the layers,
#: and the ablations of IntraSlice are IntraSlice.
SKIP = {"sleb"}


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_every_method_that_claims_a_real_config_runs_and_the_rest_refuse(name, tiny_tokenizer_dir, data_dir, tmp_path):
    from transformers import AutoTokenizer

    model = real_tiny_model(name)
    path = tmp_path / name
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(path)
    registry = load_plugins()
    arch = architecture_for(model.config.model_type)
    methods = [m for m in registry.methods.values() if not m.ablation_of and m.name not in SKIP]
    claims = [m.name for m in methods if m.unsupported(arch) is None]
    refuses = {m.name: m.unsupported(arch) for m in methods if m.unsupported(arch) is not None}
    common = dict(model=str(path), calibration="wikitext2:4x32", eval_windows=2, eval_length=32, data_dir=str(data_dir),
                  cache_dir=tmp_path / "cache")
    records = run(RunConfig(methods=claims, ratios=[0.3], out=tmp_path / "out", save_models=True, **common),
                  registry, log=lambda *a: None)
    failed = {r.method: r.error for r in records if not r.ok}
    assert not failed, failed
    assert {r.method for r in records} == set(claims)
    served = [m for m in ("dense", "flap", "rtn") if m in claims]  # dense, narrower, quantized
    timed = run(RunConfig(methods=served, ratios=[0.3], out=tmp_path / "out", evals=["ppl:wikitext2", "speed:decode@1x8"],
                          **common), registry, log=lambda *a: None)
    assert all(r.ok and r.metrics["speed:decode@1x8"] > 0 for r in timed), {r.method: r.error for r in timed}
    for record in records:  # the measured ratio is the target (a depth method's nearest step is marked)
        if record.method_kind in ("structured", "unstructured") and record.mode != "nearest-ratio":
            assert abs(record.achieved["ratio"] - 0.3) < 0.02, (record.method, record.achieved["ratio"])
    exported = [r for r in records if r.method in ("flap", "shortgpt", "rtn")]
    for record in exported:  # a saved model, loaded back as a model of its own, scores the same
        saved = next((tmp_path / "out" / "models").glob(f"*__{record.method}__*"))
        (again,) = run(RunConfig(methods=["dense"], out=tmp_path / f"again-{record.method}", model=str(saved),
                                 **{k: v for k, v in common.items() if k != "model"}), registry, log=lambda *a: None)
        assert again.metrics["ppl:wikitext2"] == pytest.approx(record.metrics["ppl:wikitext2"], rel=1e-4), record.method
    for method, reason in refuses.items():
        with pytest.raises(UnsupportedArchitecture, match=reason.split(":")[0][:40]):
            run(RunConfig(methods=["dense", method], ratios=[0.3], out=tmp_path / "refused", **common),
                registry, log=lambda *a: None)
