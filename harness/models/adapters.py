"""Model adapters: where each architecture keeps its blocks, linears, norms and head.

Supporting a new architecture is a declarative change: add an ``Architecture`` row to
``ARCHITECTURES``. Methods see every model through the same ``ModelAdapter`` interface:
linear layers by *role* (q, k, v, o, gate, up, down; fused qkv / gate_up where the model
fuses them, with the rows of each part), the attention and MLP modules, which norm feeds
which, embeddings, rotary embedding, LM head and the logits. No code outside this module
names a model's modules (``self_attn``, ``o_proj``, ``*_layernorm``...): that is this
module's knowledge, one row per architecture.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    family: str
    model_types: tuple[str, ...]  # transformers' config.model_type values
    linears: dict[str, str]  # role -> attribute path inside one decoder block
    norms: tuple[str, ...]  # attribute paths of the block's norms, in forward order
    #: Which norm feeds which linears (SliceGPT folds norm scales into their readers).
    norm_readers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    parallel_block: bool = False  # attention and MLP read the same normed input (Phi-2)
    #: Fused projections: role -> the roles it stacks along its output rows, in order.
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attention: str = "self_attn"  # the attention module inside a block
    mlp: str = "mlp"
    #: Norms inside the attention module on q and k (paths relative to it), if any.
    qk_norms: tuple[str, ...] = ()
    #: Norms applied to a sublayer's *output* before the residual add (Gemma-2/3): they
    #: make a block neither rotation-invariant nor linear in the value path.
    post_norms: tuple[str, ...] = ()
    #: Features the generic attention kernels of this harness do not implement; a method
    #: that replaces the attention module must refuse the architecture, naming them.
    attention_features: tuple[str, ...] = ()
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    rotary: str | None = "model.rotary_emb"
    lm_head: str = "lm_head"

    @property
    def mlp_roles(self) -> tuple[str, ...]:
        return tuple(r for r, p in self.linears.items() if p.startswith(self.mlp + "."))

    @property
    def attention_norm(self) -> str:
        """The norm whose output the attention projections read."""
        return next(n for n, readers in self.norm_readers.items() if set(readers) & set(self.attention_inputs))

    @property
    def mlp_norm(self) -> str:
        """The norm whose output the MLP's input projections read (Phi-2: the same one)."""
        return next(n for n, readers in self.norm_readers.items() if set(readers) & set(self.mlp_inputs))

    @property
    def attention_inputs(self) -> tuple[str, ...]:
        return tuple(r for r in self.linears if r in ("q", "k", "v", "qkv"))

    @property
    def mlp_inputs(self) -> tuple[str, ...]:
        return tuple(r for r in self.mlp_roles if r != "down")


_LLAMA_LINEARS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}

ARCHITECTURES: tuple[Architecture, ...] = (
    # Llama-2, Llama-3 (GQA), SmolLM2, Mistral, Qwen2 (q/k/v biases): one layout.
    Architecture(
        family="llama",
        model_types=("llama", "mistral", "qwen2"),
        linears=_LLAMA_LINEARS,
        norms=("input_layernorm", "post_attention_layernorm"),
        norm_readers={
            "input_layernorm": ("q", "k", "v"),
            "post_attention_layernorm": ("gate", "up"),
        },
    ),
    # Phi-3: fused qkv and gate_up projections.
    Architecture(
        family="phi3",
        model_types=("phi3",),
        linears={
            "qkv": "self_attn.qkv_proj",
            "o": "self_attn.o_proj",
            "gate_up": "mlp.gate_up_proj",
            "down": "mlp.down_proj",
        },
        norms=("input_layernorm", "post_attention_layernorm"),
        norm_readers={"input_layernorm": ("qkv",), "post_attention_layernorm": ("gate_up",)},
        fused={"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")},
    ),
    # Phi-2: LayerNorm with bias, attention and MLP in parallel on one normed input,
    # biases everywhere, partial rotary.
    Architecture(
        family="phi2",
        model_types=("phi",),
        linears={
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.dense",
            "up": "mlp.fc1",
            "down": "mlp.fc2",
        },
        norms=("input_layernorm",),
        norm_readers={"input_layernorm": ("q", "k", "v", "up")},
        parallel_block=True,
        qk_norms=("q_layernorm", "k_layernorm"),  # present when config.qk_layernorm
        final_norm="model.final_layernorm",
    ),
    # Gemma-2 and Gemma-3 (text): four norms per block (pre and post each sublayer), GQA,
    # tied embeddings scaled by √d, alternating sliding-window and global layers.
    Architecture(
        family="gemma",
        model_types=("gemma2", "gemma3_text"),
        linears=_LLAMA_LINEARS,
        norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
               "post_feedforward_layernorm"),
        norm_readers={"input_layernorm": ("q", "k", "v"), "pre_feedforward_layernorm": ("gate", "up")},
        qk_norms=("q_norm", "k_norm"),  # Gemma-3
        post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
        attention_features=("sliding-window layers", "attention logit soft-capping (Gemma-2)",
                            "per-layer-type rotary tables (Gemma-3)"),
    ),
)

FAMILIES = tuple(a.family for a in ARCHITECTURES)

#: The keyword under which a decoder block takes its KV cache: ``cache`` from
#: transformers 5.24, ``past_key_values`` before (``past_key_value`` in 4.x).
CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value")


class UnsupportedArchitecture(ValueError):
    pass


def architecture_for(model_type: str) -> Architecture:
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    raise UnsupportedArchitecture(
        f"architecture {model_type!r} is not supported; supported model types: {supported_model_types()}"
    )


def supported_model_types() -> str:
    return ", ".join(t for a in ARCHITECTURES for t in a.model_types)


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def _find(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class ModelAdapter:
    """One causal LM seen through its architecture's layout."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self.arch = architecture_for(model.config.model_type)

    # --- structure -------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.arch.family

    @property
    def blocks(self) -> nn.ModuleList:
        return _get(self.model, self.arch.layers)

    @property
    def embeddings(self) -> nn.Embedding:
        return _get(self.model, self.arch.embed)

    @property
    def final_norm(self) -> nn.Module:
        return _get(self.model, self.arch.final_norm)

    @property
    def rotary(self) -> nn.Module | None:
        return _get(self.model, self.arch.rotary) if self.arch.rotary else None

    @property
    def lm_head(self) -> nn.Linear:
        return _get(self.model, self.arch.lm_head)

    @property
    def tied_embeddings(self) -> bool:
        return self.lm_head.weight is self.embeddings.weight

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.arch.linears)

    def linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """The block's linear layers by role, in forward order."""
        return {role: _get(block, path) for role, path in self.arch.linears.items()}

    def norms(self, block: nn.Module) -> dict[str, nn.Module]:
        return {path: _get(block, path) for path in self.arch.norms}

    def named_linears(self) -> Iterator[tuple[str, nn.Linear]]:
        """("layers.3.up", linear) for every linear of every decoder block."""
        for i, block in enumerate(self.blocks):
            for role, linear in self.linears(block).items():
                yield f"layers.{i}.{role}", linear

    @functools.cached_property
    def cache_keyword(self) -> str:
        """The keyword under which this transformers version hands the KV cache down.

        Read from the public signature of the model's ``forward`` (``inspect`` follows
        transformers' deprecation wrappers to the real one); the model passes the cache to
        its blocks and they to their attention under the same name. The model class is
        read, not a block's, because methods may replace blocks with their own modules.
        """
        parameters = inspect.signature(type(self.model).forward).parameters
        return next((k for k in CACHE_KEYWORDS if k in parameters), CACHE_KEYWORDS[0])

    def remove_blocks(self, indices) -> None:
        """Delete whole decoder blocks (depth pruning) and renumber the rest as a model of that
        depth numbers them: each block's ``layer_idx`` (its KV-cache slot), the config's
        ``num_hidden_layers`` (transformers runs that many blocks) and its per-block lists
        (``layer_types``). The model then saves as a stock checkpoint with fewer layers."""
        blocks = self.blocks
        depth = len(blocks)
        drop = sorted(set(int(i) for i in indices))
        if any(not 0 <= i < depth for i in drop):
            raise IndexError(f"block indices must lie in [0, {depth}), got {drop}")
        if len(drop) >= depth:
            raise ValueError(f"cannot remove all {depth} blocks")
        keep = [i for i in range(depth) if i not in drop]
        for name in ("layer_types",):
            values = getattr(self.config, name, None)
            if isinstance(values, (list, tuple)) and len(values) == depth:
                setattr(self.config, name, [values[i] for i in keep])
        for i in reversed(drop):
            del blocks[i]
        for index, block in enumerate(blocks):
            for module in block.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = index
        self.config.num_hidden_layers = len(blocks)

    def replace_linear(self, block: nn.Module, role: str, new: nn.Module) -> None:
        """Swap a block's linear for another module (e.g. a smaller nn.Linear)."""
        _set(block, self.arch.linears[role], new)

    def norm_modules(self, block: nn.Module) -> list[nn.Module]:
        """The block's norms, q/k norms included: what the parameter count leaves out of r."""
        found = [m for m in (_find(block, path) for path in self.arch.norms) if m is not None]
        attention = _find(block, self.arch.attention)
        found += [m for m in (_find(attention, p) for p in self.arch.qk_norms) if m is not None] if attention else []
        return found

    def attention(self, block: nn.Module) -> nn.Module:
        return _get(block, self.arch.attention)

    def replace_attention(self, block: nn.Module, new: nn.Module) -> None:
        _set(block, self.arch.attention, new)

    def mlp(self, block: nn.Module) -> nn.Module:
        return _get(block, self.arch.mlp)

    def attention_norm(self, block: nn.Module) -> nn.Module:
        return _get(block, self.arch.attention_norm)

    def mlp_norm(self, block: nn.Module) -> nn.Module:
        return _get(block, self.arch.mlp_norm)

    def attention_projections(self, block: nn.Module) -> dict[str, str]:
        """role -> attribute name inside the attention module (q_proj, Phi-2's dense, qkv_proj)."""
        prefix = self.arch.attention + "."
        return {role: path.removeprefix(prefix) for role, path in self.arch.linears.items() if path.startswith(prefix)}

    def qk_norms(self, block: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """The attention's q and k norms, where the model has them (Gemma-3; Phi-2 with qk_layernorm)."""
        attention = self.attention(block)
        found = [getattr(attention, name, None) for name in self.arch.qk_norms]
        return tuple(found) if found and all(m is not None for m in found) else None

    def fused_rows(self, role: str, linear: nn.Linear) -> dict[str, slice]:
        """The output rows of each part of a fused projection as it is now (a method may have
        narrowed the value or MLP part): {"q": slice, "k": slice, "v": slice}."""
        parts, rows_total = self.arch.fused[role], linear.out_features
        if parts == ("q", "k", "v"):  # q and k keep their width; v is what remains
            q, k = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            sizes = [q, k, rows_total - q - k]
        else:  # stacked halves (gate, up)
            sizes = [rows_total // len(parts)] * len(parts)
        starts = [sum(sizes[:i]) for i in range(len(parts))]
        return {part: slice(start, start + size) for part, start, size in zip(parts, starts, sizes)}

    @property
    def layer_types(self) -> list[str]:
        """Each block's attention type: "full_attention" or "sliding_attention" (Gemma, Mistral)."""
        types = getattr(self.config, "layer_types", None)
        return list(types) if types else ["full_attention"] * len(self.blocks)

    @property
    def sliding_window(self) -> int | None:
        return getattr(self.config, "sliding_window", None)

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor, layer_type: str):
        """The rotary (cos, sin) a block of ``layer_type`` gets; Gemma-3's differ by type."""
        if self.rotary is None:
            return None
        if self._rotary_takes_layer_type:
            return self.rotary(hidden, position_ids, layer_type)
        return self.rotary(hidden, position_ids)

    @functools.cached_property
    def _rotary_takes_layer_type(self) -> bool:  # read once, not on every serving step
        return "layer_type" in inspect.signature(type(self.rotary).forward).parameters

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, LM head and, where the model has it, final logit soft-capping (Gemma-2/3)."""
        logits = self.lm_head(self.final_norm(hidden))
        cap = getattr(self.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def set_final_norm(self, module: nn.Module) -> None:
        _set(self.model, self.arch.final_norm, module)

    def untie_embeddings(self) -> None:
        """Give the LM head its own weight (needed before transforming either side)."""
        if self.tied_embeddings:
            self.lm_head.weight = nn.Parameter(self.embeddings.weight.detach().clone())
            self.config.tie_word_embeddings = False

    # --- geometry ----------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads

    @property
    def device(self) -> torch.device:
        return self.embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.weight.dtype
