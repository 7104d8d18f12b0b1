"""GGUF checkpoints: every architecture the adapter supports loads from a GGUF file written as
llama.cpp writes it, with the model type transformers' own GGUF table gives it; anything else is
refused from the metadata."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from gguf_files import differing_tensors, write_gguf

from harness.models import loading as models
from harness.models.adapters import UnsupportedArchitecture, architecture_for

# tiny model (tests/conftest.py) → llama.cpp's architecture name, general.name, the model type
# transformers reads it as
GGUF_ROWS = {
    "llama2": ("llama", "tiny-llama", "llama"),
    "smollm2": ("llama", "tiny-smollm2", "llama"),  # tied head: no output.weight in the file
    # llama.cpp writes Mistral as llama, and a real file (general.name "Mistral 7B Instruct ...")
    # loads as Llama: the same network, without a sliding window
    "mistral": ("llama", "Mistral 7B tiny", "llama"),
    "qwen2": ("qwen2", "tiny-qwen2", "qwen2"),
    "phi3": ("phi3", "tiny-phi3", "phi3"),
    "gemma2": ("gemma2", "tiny-gemma2", "gemma2"),
    "gemma3": ("gemma3", "tiny-gemma3", "gemma3_text"),  # the file holds the text model only
}


@pytest.fixture
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.mark.parametrize("tiny", list(GGUF_ROWS))
def test_every_supported_architecture_loads_from_gguf(tiny, tokenizer, tmp_path):
    gguf_arch, name, model_type = GGUF_ROWS[tiny]
    source = tiny_model(tiny)
    path = write_gguf(source, tokenizer, tmp_path / f"{name}.gguf", gguf_arch, name)
    config = models.load_config(str(path))
    assert config.model_type == model_type
    architecture_for(config.model_type)  # a row of the adapter
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
        assert getattr(config, field) == getattr(source.config, field), field
    model, loaded_tokenizer = models.load_model(str(path), torch.float32)
    assert not differing_tensors(source, model)  # every tensor back where it came from, unpermuted
    assert loaded_tokenizer("the model").input_ids[-2:] == tokenizer("the model").input_ids[-2:]
    ids = torch.randint(0, source.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_a_gguf_transformers_cannot_read_is_refused_from_its_metadata(tokenizer, tmp_path):
    # llama.cpp's phi2 has no row in transformers' GGUF table: refused before any tensor is read
    path = write_gguf(tiny_model("llama2"), tokenizer, tmp_path / "phi2.gguf", "phi2")
    with pytest.raises(UnsupportedArchitecture, match="'phi2'.*transformers cannot load it from GGUF.*gemma3_text"):
        models.load_config(str(path))


def test_a_gguf_whose_tensors_transformers_cannot_map_is_refused_clearly(tokenizer, tmp_path):
    # general.name exactly "mistral": transformers reads the config as Mistral, then finds no
    # llama.cpp tensor names for that type
    path = write_gguf(tiny_model("mistral"), tokenizer, tmp_path / "m.gguf", "llama", "mistral")
    assert models.load_config(str(path)).model_type == "mistral"
    with pytest.raises(UnsupportedArchitecture, match="cannot map its tensors"):
        models.load_model(str(path), torch.float32)
