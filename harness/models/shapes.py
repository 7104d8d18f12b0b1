"""Model shapes for benchmarks that need no trained weights.

Compression time and inference speed depend on shapes, not values: a random-initialised
model of Llama-2-7B's shape times like Llama-2-7B. Adding a shape is one entry here.
"""

from __future__ import annotations

import torch

SHAPES: dict[str, dict] = {
    "llama-2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       vocab_size=32000, max_position_embeddings=4096),
    "llama-2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824,
                        num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                        vocab_size=32000, max_position_embeddings=4096),
    "llama-3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "phi-3-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       vocab_size=32064, max_position_embeddings=4096, pad_token_id=32000),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True),
}


def shape_config(name: str, layers: int | None = None):
    from transformers import AutoConfig

    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    spec = dict(SHAPES[name])
    if layers is not None:
        spec["num_hidden_layers"] = layers
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    config.use_cache = False
    return config


def random_model(name: str, dtype: torch.dtype = torch.float16, layers: int | None = None,
                 init_device: str = "cpu", seed: int = 0):
    """A random-initialised model of the named shape, returned on the CPU in ``dtype``.

    ``init_device="cuda"`` draws the weights on the GPU (seconds instead of minutes for
    7B) before moving them to the CPU, where the block-by-block driver expects them.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(init_device):
        model = AutoModelForCausalLM.from_config(shape_config(name, layers), dtype=dtype)
    return model.to("cpu").eval()
