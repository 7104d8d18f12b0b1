"""What the drivers of a side-by-side share: the inputs' sizes, the model load and the perplexity
protocol of the reference side (scripts that run in a reference's own environment: an older
transformers, without the harness), and the kept-unit bookkeeping and block weight counts both
sides report, so that their numbers are counted alike.

The protocol is the harness's for these comparisons: SmolLM2-135M in float32 on the CPU, the
first ``TEST_WINDOWS`` test windows of ``make_inputs.py``'s ``ids.pt``, each window alone, no BOS,
float32 logits. A driver imports it as a sibling module (``python benchmarks/fidelity/X.py`` puts
this folder first on ``sys.path``).
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

SEED = 0
CALIBRATION_WINDOWS = 8
CALIBRATION_LENGTH = 512
TEST_WINDOWS = 16
ROPE_THETA = 100000.0  # the v5 config stores it under rope_parameters; older transformers would read 10000


def import_reference(reference_dir: Path, name: str) -> ModuleType:
    """Import ``name`` (e.g. ``lib.prune``) from the reference copy, put first on ``sys.path``."""
    if str(reference_dir) not in sys.path:
        sys.path.insert(0, str(reference_dir))
    return importlib.import_module(name)


def load_model(model_dir: Path, **from_pretrained) -> nn.Module:
    """float32, SmolLM2's rotary base set explicitly, ``seqlen`` as the references read it.

    ``from_pretrained`` adds loader arguments a reference expects (``device_map="cpu"`` gives the
    ``hf_device_map`` that OWL's code reads)."""
    config = AutoConfig.from_pretrained(str(model_dir))
    config.rope_theta = ROPE_THETA
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), config=config, torch_dtype=torch.float32,
                                                 low_cpu_mem_usage=True, **from_pretrained)
    assert model.config.rope_theta == ROPE_THETA
    model.seqlen = CALIBRATION_LENGTH
    model.eval()
    return model


@torch.no_grad()
def perplexity(model: nn.Module, test_ids: torch.Tensor) -> tuple[float, float]:
    """Each window alone, no BOS, float32 logits; returns exp(mean NLL) and the summed NLL."""
    nll_sum = 0.0
    for window in test_ids.split(1):
        logits = model(window).logits.float()
        nll = nn.functional.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum")
        nll_sum += nll.double().item()
    predicted_tokens = test_ids.shape[0] * (test_ids.shape[1] - 1)
    return math.exp(nll_sum / predicted_tokens), nll_sum


def kept_units(config, removed: dict[int, tuple[list[int], list[int]]]) -> tuple[list, list]:
    """Kept query heads and MLP channels of every layer, from what was removed (by layer)."""
    heads_kept, mlp_kept = [], []
    for layer in range(config.num_hidden_layers):
        heads_removed, channels_removed = removed.get(layer, ([], []))
        heads_kept.append([h for h in range(config.num_attention_heads) if h not in heads_removed])
        channels_removed = set(channels_removed)
        mlp_kept.append([c for c in range(config.intermediate_size) if c not in channels_removed])
    return heads_kept, mlp_kept


def layer_linear_weights(config, heads: list[int], channels: list[int]) -> int:
    """q, k, v, o, gate, up, down weights of one block keeping ``heads`` and ``channels``; a KV
    head stays while any query head of its group does."""
    hidden = config.hidden_size
    head_dim = hidden // config.num_attention_heads
    heads_per_group = config.num_attention_heads // config.num_key_value_heads
    groups = len({head // heads_per_group for head in heads})
    return (2 * len(heads) + 2 * groups) * head_dim * hidden + 3 * len(channels) * hidden


def block_weight_counts(config, heads_kept: list[list[int]], mlp_kept: list[list[int]]) -> dict:
    """The block linears' weights after pruning to the kept units, and the share removed."""
    all_heads, all_channels = list(range(config.num_attention_heads)), list(range(config.intermediate_size))
    dense = config.num_hidden_layers * layer_linear_weights(config, all_heads, all_channels)
    after = sum(layer_linear_weights(config, heads, channels) for heads, channels in zip(heads_kept, mlp_kept))
    return {"block_linear_weights_dense": dense, "block_linear_weights_after": after,
            "block_linear_weights_removed": dense - after, "removed_fraction_of_block_linears": 1 - after / dense}
