"""Real-model tests on the embedded default, SmolLM2-135M-Instruct (slow: minutes on 2 cores).

Small calibration (8 × 256 tokens of WikiText-2) and windowed perplexity (first 2 test
windows of 1024 tokens): enough to check orderings the papers establish, not to quote.
"""

import copy

import pytest
import torch
from conftest import SHARED_DATA, needs_smollm2

from harness.calibration import Calibration, CalibrationSpec, draw_windows, tokenize
from harness.data.datasets import BUILTIN
from harness.evaluations.perplexity import eval_windows, perplexity
from harness.method import Target
from harness.models.adapters import ModelAdapter
from harness.plugins import default_registry
from harness.targets import count_parameters, measure_ratio

pytestmark = needs_smollm2()


@pytest.fixture(scope="module")
def smollm2():
    from harness.models.loading import load_model

    model, tokenizer = load_model()
    wikitext = BUILTIN[0]
    calib_ids = tokenize(tokenizer, wikitext.text("calibration", SHARED_DATA)[0])
    test_ids = tokenize(tokenizer, wikitext.text("test", SHARED_DATA)[0])
    calibration = Calibration(draw_windows(calib_ids, 8, 256, seed=0), CalibrationSpec("wikitext2", 8, 256))
    windows, _ = eval_windows(test_ids, 1024, limit=2)
    return model, calibration, windows


@pytest.fixture(scope="module")
def results(smollm2):
    """Perplexity by (method, target label), each method on a fresh copy of the model."""
    model, calibration, windows = smollm2
    registry = default_registry()
    dense = count_parameters(ModelAdapter(model))
    cache = {}

    def evaluate(method: str, target: Target):
        key = (method, target.label(), tuple(sorted(target.options.items())))
        if key not in cache:
            adapter = ModelAdapter(copy.deepcopy(model))
            registry.method(method).compress(adapter, calibration, target)
            ratio = measure_ratio(dense, adapter).ratio
            cache[key] = (perplexity(adapter, windows, "cpu").perplexity, ratio)
        return cache[key]

    return evaluate


def test_embedded_default_is_smollm2(smollm2):
    model = smollm2[0]
    adapter = ModelAdapter(model)
    assert adapter.family == "llama" and len(adapter.blocks) == 30
    assert adapter.num_kv_heads == 3 < adapter.num_heads == 9  # GQA
    assert adapter.tied_embeddings
    assert count_parameters(adapter).total == pytest.approx(134.5e6, rel=0.01)


def test_dense_perplexity_is_sane(results):
    ppl, ratio = results("dense", Target(0.0))
    assert ratio == 0
    assert 10 < ppl < 40  # SmolLM2-135M on WikiText-2 (1024-token windows)


def test_magnitude_degrades_with_ratio(results):
    dense = results("dense", Target(0.0))[0]
    p3, r3 = results("magnitude", Target(0.3))
    p5, r5 = results("magnitude", Target(0.5))
    assert abs(r3 - 0.3) <= 0.005 and abs(r5 - 0.5) <= 0.005
    assert dense < p3 < p5


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_pruning_beats_magnitude_and_2_4_costs_more(results, method):
    dense = results("dense", Target(0.0))[0]
    magnitude = results("magnitude", Target(0.5))[0]
    unstructured, ratio = results(method, Target(0.5))
    two_four, ratio_24 = results(method, Target(0.5, "2:4"))
    assert abs(ratio - 0.5) <= 0.005 and abs(ratio_24 - 0.5) <= 0.005
    assert dense < unstructured < 0.5 * magnitude  # far below magnitude
    assert unstructured < two_four


def test_sparsegpt_beats_wanda_at_2_4(results):
    # weight reconstruction matters most under the N:M constraint (both papers' tables)
    assert results("sparsegpt", Target(0.5, "2:4"))[0] < results("wanda", Target(0.5, "2:4"))[0]


def test_slicegpt_rises_with_slicing_and_equals_dense_at_zero(results, smollm2):
    dense = results("dense", Target(0.0))[0]
    width = ModelAdapter(smollm2[0]).hidden_size
    at_zero = results("slicegpt", Target(0.0, options={"width": width}))[0]
    assert at_zero == pytest.approx(dense, rel=1e-4)  # rotation alone changes nothing
    p15 = results("slicegpt", Target(0.0, options={"slicing": 0.15}))[0]
    p30 = results("slicegpt", Target(0.0, options={"slicing": 0.3}))[0]
    assert dense < p15 < p30



def test_dequantised_gguf_cache_gives_the_same_model(smollm2, tmp_path):
    """The second load reads the cached safetensors: same weights, same tying, same tokenizer."""
    from harness.models.loading import dequantized_cache, load_model, load_tokenizer, resolve

    model, tokenizer = load_model(cache_dir=tmp_path)
    cached_dir = dequantized_cache(resolve("smollm2-135m-instruct"), torch.float32, tmp_path)
    assert (cached_dir / "model.safetensors").is_file()
    again, tokenizer_again = load_model(cache_dir=tmp_path)
    state, state_again = smollm2[0].state_dict(), again.state_dict()
    assert state.keys() == state_again.keys() and all(torch.equal(state[k], state_again[k]) for k in state)
    assert again.lm_head.weight is again.model.embed_tokens.weight  # still tied
    assert again.config.to_diff_dict() == model.config.to_diff_dict()
    text = "Compression keeps the model's tokenizer: naïve café, 12345."
    assert tokenizer_again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert load_tokenizer(cache_dir=tmp_path)(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert list(tmp_path.joinpath("models").iterdir()) == [cached_dir]  # no staging left behind


def test_quantization_orderings_the_papers_lead_one_to_expect(results):
    dense = results("dense", Target(0.0))[0]
    w8 = results("rtn", Target(0.0, options={"bits": 8, "group_size": -1, "symmetric": True}))
    assert w8[1] == 0 and w8[0] == pytest.approx(dense, rel=0.02)  # 8 bits: dense, no parameter removed
    rtn3 = results("rtn", Target(0.0, options={"bits": 3}))[0]
    assert dense < results("rtn", Target(0.0, options={"bits": 4}))[0] < rtn3
    assert results("gptq", Target(0.0, options={"bits": 3}))[0] < rtn3  # error compensation beats rounding
    assert results("awq", Target(0.0, options={"bits": 3}))[0] < rtn3  # so do activation-aware scales


def test_matched_memory_on_smollm2(tmp_path):
    from harness.run import RunConfig, run

    config = RunConfig(methods=["dense", "rtn", "slicegpt"], match="memory:0.5", calibration="wikitext2:8x256",
                       eval_windows=1, eval_length=1024, out=tmp_path, data_dir=str(SHARED_DATA))
    records = {r.method: r for r in run(config, log=lambda *a: None)}
    assert all(r.ok for r in records.values()), [r.error for r in records.values()]
    # 8 bits with one fp16 scale per row: the format nearest to half the bytes at or under it
    assert records["rtn"].target["options"] == {"bits": 8, "group_size": -1, "symmetric": True}
    assert 1 - records["slicegpt"].achieved["memory_ratio"] == pytest.approx(0.5, abs=0.005)
