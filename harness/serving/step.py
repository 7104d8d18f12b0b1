"""The serving step whose speed is measured: fixed shapes, a static KV cache, CUDA graphs.

Two phases, each a ``SpeedSpec`` written ``PHASE@BxL``:

    prefill@8x2048   8 prompts of 2048 tokens in one forward (KV cache written):
                     tokens/s = B·L / step time
    decode@16x512    one new token for each of 16 sequences whose static KV cache holds
                     512 positions: tokens/s = B / step time

The step runs the model's own decoder blocks, one after another, on fixed-shape inputs:
a preallocated KV cache (``StaticKVCache``, written in place at positions held in a
device tensor) and a precomputed additive mask, so nothing in the step depends on
Python-side values, and the whole step can be captured once as a CUDA graph and replayed
(``capture_graph``): no Python, no kernel-launch gaps, as in a serving engine.

Why decode at a fixed cache length: with a static cache, attention reads all L positions
(masked) at every step, so one step costs the same wherever in the cache it writes. Weights
and cache are read once per step (``decode_read_bytes``, ``StaticKVCache.nbytes``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from harness.models.adapters import ModelAdapter


@dataclass(frozen=True)
class SpeedSpec:
    phase: str  # "prefill" | "decode"
    batch: int
    length: int  # prompt tokens (prefill) or KV-cache positions (decode)

    @classmethod
    def parse(cls, text: str) -> SpeedSpec:
        match = re.fullmatch(r"(prefill|decode)@(\d+)x(\d+)", text.strip())
        if not match:
            raise ValueError(f"speed spec must be prefill@BxL or decode@BxL (e.g. decode@1x512), got {text!r}")
        spec = cls(match[1], int(match[2]), int(match[3]))
        if spec.batch < 1 or spec.length < 2:
            raise ValueError(f"speed spec {text!r}: batch ≥ 1 and length ≥ 2 needed")
        return spec

    @property
    def label(self) -> str:
        return f"{self.phase}@{self.batch}x{self.length}"

    @property
    def tokens_per_step(self) -> int:
        return self.batch * (self.length if self.phase == "prefill" else 1)

class StaticKVCache:
    """Keys and values of every layer, preallocated; written where ``positions`` says.

    transformers' attention modules call ``update(key, value, layer_idx, ...)`` and attend
    over what it returns: here, the whole preallocated buffer (masked beyond the written
    positions). ``positions`` is a device tensor set by the step that runs, so a captured
    graph writes wherever that tensor points. Buffers are allocated on the first call per
    layer, from the shapes the layer produces: narrow value heads (IntraSlice) get a
    narrow value cache.
    """

    def __init__(self, length: int):
        self.length = length
        self.positions: torch.Tensor | None = None
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx not in self.keys:
            B, H = key.shape[:2]
            self.keys[layer_idx] = key.new_zeros(B, H, self.length, key.shape[-1])
            self.values[layer_idx] = value.new_zeros(B, value.shape[1], self.length, value.shape[-1])
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.positions, key)
        values.index_copy_(2, self.positions, value)
        return keys, values

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())

def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor occupies; a semi-structured sparse one counts its packed values and metadata."""
    parts = [getattr(t, name) for name in ("packed", "meta") if getattr(t, name, None) is not None]
    if parts:
        return sum(p.numel() * p.element_size() for p in parts)
    return t.numel() * t.element_size()

def weight_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) not in seen:
            seen.add(id(p))
            total += tensor_bytes(p)
    return total

def decode_read_bytes(adapter: ModelAdapter) -> int:
    """Weight bytes one decode step must read: every weight except the input embedding table,
    of which a step reads one row per token (unless the LM head shares it and reads it whole).
    With Llama-2-7B's untied 262 MB table, counting it would credit a decode step with 2 % more
    traffic than it has; with Qwen2.5-0.5B's, 28 %."""
    table = adapter.embeddings.weight
    head = adapter.lm_head.weight
    tied = head.data_ptr() == table.data_ptr()
    return weight_bytes(adapter.model) - (0 if tied else tensor_bytes(table))

def step_flops(adapter: ModelAdapter, spec: SpeedSpec) -> float:
    """Matrix-product FLOPs of one step, counted dense-equivalent (a 2:4 linear counts its full
    shape, so its fraction of the dense peak shows what sparsity buys): every block linear
    on every token, plus causal attention (QKᵀ and AV) over the prompt in prefill."""
    linear = sum(2 * lin.in_features * lin.out_features for _, lin in adapter.named_linears())
    attention = 0.0
    if spec.phase == "prefill":  # half of the L×L score matrix is masked
        attention = len(adapter.blocks) * 2 * 2 * spec.batch * adapter.num_heads * adapter.head_dim * spec.length**2 / 2
    return spec.tokens_per_step * linear + attention

class ServingStep:
    """One fixed-shape forward of ``adapter``'s model: embeddings → blocks → last-token logits.

    ``batch`` sequences feed tokens at cache positions ``first .. first+tokens−1`` into a
    static cache of ``cache.length`` positions; the additive mask lets position i see
    positions ≤ i (and, in a sliding-window layer, only the last ``window`` of them). Each
    layer type gets its own mask and rotary table, as the model's own forward gives them.

    Where that mask says nothing SDPA cannot say itself, no mask is passed, as a serving
    engine passes none: a prefill from position 0 that fills the cache is plain causal
    attention (SDPA's ``is_causal``: the flash kernel, not a masked one reading an L×L
    mask), and a decode step that sees every cached position needs no mask at all. Only
    SDPA-style implementations get this (eager attention would then attend everywhere).
    """

    def __init__(self, adapter: ModelAdapter, batch: int, first: int, tokens: int,
                 cache: StaticKVCache, device: torch.device):
        self.adapter, self.cache = adapter, cache
        self.positions = torch.arange(first, first + tokens, device=device)
        generator = torch.Generator(device=device).manual_seed(first)
        self.input_ids = torch.randint(0, adapter.embeddings.num_embeddings, (batch, tokens),
                                       device=device, generator=generator)
        dtype, keys = adapter.dtype, torch.arange(cache.length, device=device)[None, :]
        implicit_masks = getattr(adapter.config, "_attn_implementation", None) in (
            "sdpa", "flash_attention_2", "flash_attention_3")
        causal = torch.ones(tokens, cache.length, dtype=torch.bool, device=device).tril()
        self.masks = {}
        for layer_type in set(adapter.layer_types):
            allowed = keys <= self.positions[:, None]
            if layer_type == "sliding_attention" and adapter.sliding_window:
                allowed &= keys > self.positions[:, None] - adapter.sliding_window
            if implicit_masks and ((tokens == 1 and bool(allowed.all())) or
                                   (first == 0 and tokens == cache.length and torch.equal(allowed, causal))):
                self.masks[layer_type] = None
                continue
            mask = torch.zeros(1, 1, tokens, cache.length, dtype=dtype, device=device)
            self.masks[layer_type] = mask.masked_fill_(~allowed, torch.finfo(dtype).min)

    @classmethod
    def for_spec(cls, adapter: ModelAdapter, spec: SpeedSpec, device: torch.device) -> ServingStep:
        cache = StaticKVCache(spec.length)
        if spec.phase == "prefill":
            return cls(adapter, spec.batch, 0, spec.length, cache, device)
        # decode: a prompt fills positions 0..L−2, the timed step writes position L−1
        prompt = cls(adapter, spec.batch, 0, spec.length - 1, cache, device)
        prompt()
        step = cls(adapter, spec.batch, spec.length - 1, 1, cache, device)
        step.prompt_ids = prompt.input_ids  # what the cache holds (tests compare with a full forward)
        return step

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        a = self.adapter
        self.cache.positions = self.positions
        hidden = a.embeddings(self.input_ids)
        position_ids = self.positions[None, :]
        shared = {"position_ids": position_ids, a.cache_keyword: self.cache, "use_cache": True,
                  "cache_position": self.positions}
        per_type = {t: {"attention_mask": mask, "position_embeddings": a.position_embeddings(hidden, position_ids, t)}
                    for t, mask in self.masks.items()}
        for block, layer_type in zip(a.blocks, a.layer_types):
            out = block(hidden, **shared, **per_type[layer_type])
            hidden = out[0] if isinstance(out, tuple) else out
        return a.logits(hidden[:, -1:])

def capture_graph(step, warmup: int = 3):
    """Warm ``step`` up on a side stream, then capture it as a CUDA graph; returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay
