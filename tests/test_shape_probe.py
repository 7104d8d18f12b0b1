"""Shape probes: the shapes (and sparsity patterns) of a compressed model, without data.

A throughput search times probes instead of compressing for real, so a probe must have
exactly the parameter count and the layer shapes the method's own ``compress`` produces.
"""

import pytest
import torch
from conftest import logits_of, synthetic_calibration, tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.plugins import default_registry
from harness.serving.sparse_kernels import is_two_four
from harness.targets import count_parameters, measure_ratio


def shapes(model):
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["slicegpt", "intraslice", "intraslice-uniform", "llm-pruner", "wanda-sp"])
def test_structured_probe_has_the_shapes_of_compress(arch, method):
    """SliceGPT's, LLM-Pruner's (whole KV groups in its middle blocks) and Wanda-sp's shapes follow
    from the ratio; IntraSlice's depend on the data (deleted heads, Fisher allocation), so its
    probe takes them from the run's report (``kept``)."""
    registry = default_registry()
    if registry.method(method).unsupported(ModelAdapter(tiny_model(arch)).arch):
        pytest.skip(f"{method} does not support {arch}")
    real, probe = tiny_model(arch), tiny_model(arch, seed=1)
    dense = count_parameters(ModelAdapter(real))
    report = registry.method(method).compress(ModelAdapter(real), synthetic_calibration(), Target(0.3))
    options = {"kept": report.knobs["kept"]} if method.startswith("intraslice") else {}
    registry.method(method).shape_probe(ModelAdapter(probe), Target(0.3, options=options))
    assert shapes(probe) == shapes(real)
    assert measure_ratio(dense, ModelAdapter(probe)).ratio == pytest.approx(
        measure_ratio(dense, ModelAdapter(real)).ratio, abs=1e-3)
    assert torch.isfinite(logits_of(probe)).all()


@pytest.mark.parametrize("pattern,ratio", [("unstructured", 0.4), ("2:4", 0.5)])
def test_sparsity_probe_has_the_pattern_and_ratio(pattern, ratio):
    model = tiny_model("llama3")
    adapter = ModelAdapter(model)
    dense = count_parameters(adapter)
    default_registry().method("wanda").shape_probe(adapter, Target(ratio, pattern))
    assert measure_ratio(dense, adapter).ratio == pytest.approx(ratio, abs=0.005)
    if pattern == "2:4":
        assert all(is_two_four(linear.weight) for _, linear in adapter.named_linears())


@pytest.mark.parametrize("arch", ["llama3", "qwen2", "phi3"])
def test_intraslice_probe_without_data_meets_the_ratio(arch):
    """Without a report the probe slices uniformly (every head, the first pairs and neurons)."""
    adapter = ModelAdapter(tiny_model(arch))
    dense = count_parameters(adapter)
    default_registry().method("intraslice").shape_probe(adapter, Target(0.3))
    step = 8 * 3 * adapter.hidden_size * len(adapter.blocks) / dense.blocks  # one MLP unit of 8
    assert measure_ratio(dense, adapter).ratio == pytest.approx(0.3, abs=step)
    assert torch.isfinite(logits_of(adapter.model)).all()


def test_dense_probe_changes_nothing():
    model = tiny_model("llama2")
    before = logits_of(model)
    default_registry().method("dense").shape_probe(ModelAdapter(model), Target(0.0))
    torch.testing.assert_close(logits_of(model), before)
