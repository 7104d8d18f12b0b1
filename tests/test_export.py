"""Exports: safetensors, no pickle; sparse models load in plain transformers; sliced models
rebuild from their shape plan with the same logits and the same measured ratio."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import SHARED_DATA, logits_of, needs_smollm2, synthetic_calibration, tiny_model

from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.models.export import SIDECAR, expressible_config, read_metadata, save_compressed
from harness.models.loading import ModelNotFound, load_model
from harness.plugins import default_registry
from harness.targets import count_parameters, measure_ratio

METHODS = [("magnitude", "unstructured"), ("wanda", "2:4"), ("sparsegpt", "unstructured"), ("besa", "unstructured"),
           ("slicegpt", "unstructured"), ("intraslice", "unstructured"), ("intraslice-recon", "unstructured"),
           ("flap", "unstructured"), ("wanda-sp", "unstructured"), ("owl", "unstructured"), ("ria", "2:4"),
           ("shortgpt", "unstructured"), ("llm-pruner", "unstructured")]


@pytest.mark.parametrize("method, pattern", METHODS)
def test_round_trip_keeps_logits_and_ratio(any_arch, method, pattern, tmp_path):
    registry = default_registry()
    model = tiny_model(any_arch)
    adapter = ModelAdapter(model)
    if registry.method(method).unsupported(adapter.arch):
        pytest.skip(f"{method} does not support {any_arch}")
    dense = count_parameters(adapter)
    registry.method(method).compress(adapter, synthetic_calibration(), Target(0.3 if pattern == "unstructured" else 0.5,
                                                                               pattern))
    before, ratio = logits_of(model), measure_ratio(dense, adapter).ratio
    save_compressed(model, None, tmp_path / "export", {"method": method})
    assert not list((tmp_path / "export").glob("*.pt")) and list((tmp_path / "export").glob("*.safetensors"))
    reloaded, _ = load_model(str(tmp_path / "export"))
    torch.testing.assert_close(logits_of(reloaded), before, rtol=0, atol=0)  # bit for bit
    assert measure_ratio(dense, ModelAdapter(reloaded)).ratio == ratio
    meta = read_metadata(tmp_path / "export")
    sliced = registry.method(method).kind == "structured" and not registry.method(method).discrete_ratios
    # depth pruning, and slicing that leaves one MLP width in every layer, are stock checkpoints
    uniform = expressible_config(model) is not None
    assert meta["loadable_by_transformers"] == (not sliced or uniform)


def test_sparse_export_loads_in_plain_transformers(tmp_path):
    """In a process where ``harness`` cannot be imported at all."""
    model = tiny_model("llama3")
    default_registry().method("wanda").compress(ModelAdapter(model), synthetic_calibration(), Target(0.5, "2:4"))
    save_compressed(model, None, tmp_path / "export", {"method": "wanda"})
    ids = torch.randint(0, 320, (3, 24), generator=torch.Generator().manual_seed(5))
    code = f"""
import sys
sys.modules["harness"] = None  # any import of the harness now fails
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "export")!r}).eval()
assert model.config.compression["method"] == "wanda"
with torch.no_grad():
    logits = model(torch.tensor({ids.tolist()})).logits
save_file({{"logits": logits.contiguous()}}, {str(tmp_path / "logits.safetensors")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    from safetensors.torch import load_file

    with torch.no_grad():
        expected = model(ids).logits
    torch.testing.assert_close(load_file(tmp_path / "logits.safetensors")["logits"], expected, rtol=1e-5, atol=1e-5)


class _Marker:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_is_never_loaded(tmp_path):
    import pickle

    marker = tmp_path / "unpickled"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "harness-model.pt").write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ModelNotFound, match="never reads them"):
        load_model(str(legacy))
    # a real export with a planted .pt beside it: loads, and the .pt is not read
    model = tiny_model("llama3")
    default_registry().method("intraslice").compress(ModelAdapter(model), synthetic_calibration(), Target(0.3))
    save_compressed(model, None, tmp_path / "export", {"method": "intraslice"})
    (tmp_path / "export" / "harness-model.pt").write_bytes(pickle.dumps(_Marker(str(marker))))
    (tmp_path / "export" / "pytorch_model.bin").write_bytes(pickle.dumps(_Marker(str(marker))))
    load_model(str(tmp_path / "export"))
    assert not marker.exists()


def test_a_directory_that_is_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFound, match="without config.json"):
        load_model(str(tmp_path))


def test_export_command_reexports_a_record(tmp_path, tiny_model_dir, data_dir):
    from harness.cli import main
    from harness.results import load_records

    data = data_dir
    code = main(["run", "--model", str(tiny_model_dir), "--methods", "intraslice", "-o", "intraslice.sparsity=0.3",
                 "--calib", "wikitext2:8x32", "--eval-windows", "1", "--eval-length", "32", "--out",
                 str(tmp_path / "out"), "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"),
                 "--save-models", "--device", "cpu"])
    assert code == 0
    record = next(r for r in load_records(tmp_path / "out") if r.method == "intraslice")
    meta = read_metadata(record.saved_model)
    assert meta["method"] == "intraslice" and meta["record"] == record.key and meta["ratio"] == record.achieved["ratio"]
    loaded, _ = load_model(record.saved_model)
    from harness.models.export import export_ratio

    assert export_ratio(record.saved_model, count_parameters(ModelAdapter(loaded))) == record.achieved["ratio"]
    assert main(["export", str(record.path), str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / SIDECAR).read_text())["structure"] == meta["structure"]
    # and the export runs as a model: its dense row has the compressed model's perplexity
    code = main(["run", "--model", record.saved_model, "--methods", "dense", "--calib", "wikitext2:8x32",
                 "--eval-windows", "1", "--eval-length", "32", "--out", str(tmp_path / "out2"),
                 "--data-dir", str(data), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert code == 0
    reloaded = load_records(tmp_path / "out2")[0]
    assert reloaded.metrics["ppl:wikitext2"] == pytest.approx(record.metrics["ppl:wikitext2"], rel=1e-4)


@pytest.mark.parametrize("method", [pytest.param(m, marks=needs_smollm2()) for m in ("wanda", "intraslice")])
def test_smollm2_export_reloads_with_the_same_perplexity(method, tmp_path):
    from harness.cli import main
    from harness.results import load_records

    common = ["--calib", "wikitext2:8x128", "--eval-windows", "1", "--eval-length", "512", "--dtype", "float32",
              "--device", "cpu", "--data-dir", str(SHARED_DATA), "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", "--methods", method, "--ratios", "0.3", "--out", str(tmp_path / "a"), "--save-models",
                 *common]) == 0
    record = load_records(tmp_path / "a")[0]
    assert main(["run", "--model", record.saved_model, "--methods", "dense", "--out", str(tmp_path / "b"),
                 *common]) == 0
    again = load_records(tmp_path / "b")[0]
    assert again.metrics["ppl:wikitext2"] == pytest.approx(record.metrics["ppl:wikitext2"], rel=1e-4)


def test_mlp_only_slicing_at_one_width_exports_a_stock_checkpoint(tmp_path):
    """The same MLP width in every layer is what ``intermediate_size`` says: stock transformers
    loads it, no shape plan needed."""
    from transformers import AutoModelForCausalLM

    from methods.intraslice.intraslice import IntraSlice

    model = tiny_model("llama3")
    IntraSlice(name="u", allocation="uniform", modules=("mlp",)).compress(
        ModelAdapter(model), synthetic_calibration(), Target(0.0, options={"sparsity": 0.25}))
    before = logits_of(model)
    save_compressed(model, None, tmp_path / "export", {"method": "intraslice-mlp"})
    meta = read_metadata(tmp_path / "export")
    assert meta["loadable_by_transformers"] and meta["structure"] is None
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "export", attn_implementation=meta["attn_implementation"])
    assert stock.config.intermediate_size == model.model.layers[0].mlp.down_proj.in_features < 128
    torch.testing.assert_close(logits_of(stock.eval()), before, rtol=0, atol=0)
    assert model.config.intermediate_size == 128  # the in-memory model keeps its dense config
