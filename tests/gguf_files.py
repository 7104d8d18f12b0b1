"""Tiny GGUF files written with the ``gguf`` package, laid out as llama.cpp's converter writes them.

A GGUF file names its tensors llama.cpp's way (``blk.0.attn_q.weight``), stores some of them
transformed, and carries the tokenizer and config as metadata. ``write_gguf`` writes a transformers
model that way, so that loading the file back through transformers tests the path a real GGUF
checkpoint takes:

- tensor names: the inverse of transformers' own GGUF → HF name map (``get_gguf_hf_weights_map``);
- Llama-family q and k rows permuted as llama.cpp's ``LlamaModel.permute`` does (rotary halves
  interleaved per head), which transformers' ``LlamaTensorProcessor`` undoes;
- Gemma's norms stored as ``1 + w`` (llama.cpp's Gemma converters), which ``Gemma2TensorProcessor``
  undoes;
- a byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``) from a transformers tokenizer.
Weights are stored as float32, so a round trip is exact but for Gemma's norms (``(1 + w) − 1``
rounds in the last bit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation: per head, rows (half 0 | half 1) become interleaved pairs."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, tokenizer, path: Path, arch: str, name: str = "tiny") -> Path:
    """Write ``model`` (a transformers causal LM) and ``tokenizer`` to ``path`` as GGUF
    architecture ``arch`` (llama.cpp's name: ``llama``, ``qwen2``, ``phi3``, ``gemma2``, ``gemma3``, ...).
    ``name`` becomes ``general.name`` (transformers reads a ``llama`` file named Mistral as Mistral)."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": config.rope_theta}
    rope = rope.get("full_attention", rope)  # Gemma-3: the global layers' table is the file's
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if arch.startswith("gemma"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)

    vocab = tokenizer.get_vocab()
    tokens = [None] * config.vocab_size
    for token, index in vocab.items():
        if index < config.vocab_size:
            tokens[index] = token
    tokens = [t if t is not None else f"<unused{i}>" for i, t in enumerate(tokens)]
    merges = [" ".join(pair) for pair in tokenizer.backend_tokenizer.model.get_merges()] \
        if hasattr(tokenizer.backend_tokenizer.model, "get_merges") else _merges(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id or 0)
    writer.add_eos_token_id(config.eos_token_id or 0)
    if config.pad_token_id is not None:
        writer.add_pad_token_id(config.pad_token_id)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    to_hf = get_gguf_hf_weights_map(model, TensorProcessor(), model_type=arch)
    for gguf_name, hf_name in to_hf.items():
        if hf_name not in state or (gguf_name == "output.weight" and config.tie_word_embeddings):
            continue  # a tied head is the embedding (its absence tells transformers so)
        weight = state[hf_name]
        if arch == "llama" and ".attn_q." in gguf_name:
            weight = _permute(weight, heads)
        elif arch == "llama" and ".attn_k." in gguf_name:
            weight = _permute(weight, kv_heads)
        elif arch.startswith("gemma") and gguf_name.endswith("norm.weight"):
            weight = weight + 1
        writer.add_tensor(gguf_name, np.ascontiguousarray(weight, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _merges(tokenizer) -> list[str]:
    import json

    return [" ".join(m) if isinstance(m, list) else m
            for m in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]]


def differing_tensors(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Names of tensors that differ between two models of one architecture (beyond float32 rounding)."""
    sb = b.state_dict()
    return [k for k, v in a.state_dict().items()
            if k not in sb or not torch.allclose(v.float(), sb[k].float(), rtol=0, atol=1e-6)]
