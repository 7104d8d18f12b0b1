"""The BOS token is part of the protocol: placed as ``--bos`` says, recorded as placed, and by
default placed as the papers' reference code tokenises WikiText-2."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_smollm2

from harness.calibration import bos_placement, tokenize
from harness.config import RunConfig
from harness.data.datasets import BUILTIN
from harness.evaluation import EvalContext
from harness.evaluations.perplexity import Perplexity
from harness.plugins import load_plugins
from harness.report.protocol import protocol_of
from harness.results import Record
from harness.run import run


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_tokenizer_dir):
    """The tiny tokenizer, made to add a BOS (id 1) as Llama's does."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    bos = tokenizer.convert_ids_to_tokens(1)
    tokenizer.bos_token = bos
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 1)])
    assert tokenizer("the model").input_ids[0] == 1
    return tokenizer


def prepared_windows(tokenizer, data_dir, bos: str, length: int = 16):
    config = RunConfig(data_dir=str(data_dir), bos=bos, eval_length=length, cache_dir=None)
    registry = load_plugins()
    context = EvalContext(config, registry.dataset, torch.device("cpu"), length, "tiny", lambda: tokenizer, None)
    prepared = Perplexity().prepare(["wikitext2"], context)
    (windows, total), = prepared.state.values()
    return windows, prepared.spec["ppl:wikitext2"]


def test_stream_window_and_none_place_the_bos_as_they_say(bos_tokenizer, data_dir):
    text = BUILTIN[0].read(BUILTIN[0].locate("test", str(data_dir)))
    plain = bos_tokenizer(text, add_special_tokens=False).input_ids
    stream, spec = prepared_windows(bos_tokenizer, data_dir, "stream")
    assert spec["bos"] == "stream" and stream[0, 0] == 1
    assert stream.flatten().tolist() == ([1] + plain)[:stream.numel()]  # one BOS, opening the stream
    window, spec = prepared_windows(bos_tokenizer, data_dir, "window")
    assert spec["bos"] == "window" and window.shape[1] == 16 and (window[:, 0] == 1).all()
    assert window[:, 1:].flatten().tolist() == plain[:window.shape[0] * 15]  # 15 text tokens after each
    none, spec = prepared_windows(bos_tokenizer, data_dir, "none")
    assert spec["bos"] == "none" and none.flatten().tolist() == plain[:none.numel()]
    assert "one BOS opening the stream" in Perplexity().describe("ppl:wikitext2", {**spec, "bos": "stream"})


def test_a_tokenizer_that_adds_no_bos_records_none(tiny_tokenizer_dir, data_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert bos_placement(tokenizer, "stream") == "none"
    with pytest.raises(ValueError, match="--bos must be one of"):
        bos_placement(tokenizer, "always")


def test_runs_record_the_bos_and_tables_part_protocols(tiny_model_dir, data_dir, tmp_path):
    config = RunConfig(model=str(tiny_model_dir), methods=["dense", "wanda"], ratios=[0.3],
                       calibration="wikitext2:4x32", eval_windows=2, eval_length=32, data_dir=str(data_dir),
                       out=tmp_path / "results", cache_dir=tmp_path / "cache", bos="window")
    records = {r.method: r for r in run(config, load_plugins(), log=lambda *a: None)}
    wanda = records["wanda"]
    assert wanda.calibration["bos"] == "window" and wanda.eval["ppl:wikitext2"]["bos"] == "window"
    old = Record.from_json(wanda.to_json())  # a record from before the field: no BOS anywhere
    del old.calibration["bos"], old.eval["ppl:wikitext2"]["bos"]
    assert protocol_of(old)["eval ppl:wikitext2.bos"] == "none" != protocol_of(wanda)["eval ppl:wikitext2.bos"]
    plain = dataclasses.replace(config, bos="none", out=tmp_path / "plain")
    plain_records = {r.method: r for r in run(plain, load_plugins(), log=lambda *a: None)}
    assert plain_records["dense"].metrics["ppl:wikitext2"] != records["dense"].metrics["ppl:wikitext2"]


REAL_MODELS = {"smollm2": None, "qwen2.5": os.environ.get("HARNESS_TEST_QWEN_GGUF")}


@pytest.mark.parametrize("model", [pytest.param(m, marks=needs_smollm2()) for m in REAL_MODELS])
def test_the_default_tokenises_as_the_reference_code(model):
    """SparseGPT's and Wanda's ``get_wikitext2``: ``tokenizer("\\n\\n".join(test['text']))`` with the
    tokenizer's defaults. The harness's default windows are that stream's first windows, token for
    token (neither tokenizer adds a BOS: recorded as none). Qwen: set HARNESS_TEST_QWEN_GGUF to its file."""
    from harness.models.loading import DEFAULT_MODEL, load_tokenizer

    path = REAL_MODELS[model] if model != "smollm2" else DEFAULT_MODEL
    if path is None or (model != "smollm2" and not Path(path).is_file()):
        pytest.skip("HARNESS_TEST_QWEN_GGUF names no file")
    tokenizer = load_tokenizer(path)
    text = BUILTIN[0].read(BUILTIN[0].locate("test", str(SHARED_DATA)))
    reference = tokenizer(text, return_tensors="pt").input_ids[0]  # the reference code's call
    ours = tokenize(tokenizer, text, "stream")
    assert torch.equal(ours, reference)
    assert bos_placement(tokenizer, "stream") == "none"
    assert text.startswith("\n\n = Robert Boulter = \n")  # the joined raw test split, as the references join it
