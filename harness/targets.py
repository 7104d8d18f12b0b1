"""What a method is asked for (``Target``) and what it achieved: the measured compression
ratio, the one number every comparison is matched on.

    r = 1 − P_blocks(compressed) / P_blocks(dense)

P_blocks counts the nonzero parameters of the decoder blocks outside their norms: every
linear weight and bias, and every matrix a method adds (SliceGPT's shortcuts, say). It is
counted on the model as it is: zeros of a masked weight do not count, a sliced weight
counts its actual shape. Counting nonzeros on both sides makes the dense model's r exactly
0 even when its weights hold a few exact zeros (quantised checkpoints do).

The contract, so that no method can hide a matrix from the count: every parameter and
every floating-point buffer of a block counts, except those of the modules the adapter
declares as the block's norms (its row's norm paths and q/k norms) and of a module that
states its count (``parameter_count()``: a quantized linear counts the weights it stands for,
not its codes and scales; quantization removes no parameter). Embeddings, norms and
the LM head are counted separately and reported in a whole-model ratio beside r; a tied
head is counted once.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from harness.models.adapters import ModelAdapter

PATTERNS = ("unstructured", "2:4", "4:8")


def implied_ratio(pattern: str) -> float | None:
    """The element ratio an N:M pattern fixes, 1 − N/M (2:4 → 0.5); None when unstructured."""
    n_m = parse_pattern(pattern)
    return 1 - n_m[0] / n_m[1] if n_m else None


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"2:4"`` → ``(2, 4)`` (keep N of every M consecutive inputs); unstructured → None."""
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", pattern)
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise ValueError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M, got {pattern!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Target:
    """What the harness asks of a method.

    ``ratio`` is the fraction of decoder-block linear parameters to remove, as the harness
    will measure it on the compressed model (see ``harness/targets.py``). For an N:M
    ``pattern`` the ratio is implied: 1 − N/M. ``options`` are the method's own knobs
    (e.g. SliceGPT's slicing fraction), passed through from the CLI or sweep file.
    """

    ratio: float
    pattern: str = "unstructured"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_m(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def mask_sparsity(self, *linears: nn.Linear) -> float:
        """The mask sparsity that makes these linears lose ``ratio`` of their nonzero
        parameters, zeros they already hold accounted for (``harness.sparsity.mask_sparsity``)."""
        from harness.sparsity import mask_sparsity

        return mask_sparsity(linears, self.ratio)

    def label(self) -> str:
        return self.pattern if self.n_m else f"{self.ratio:g}"


#: A "matched ratio" is within this many ratio units (±0.5 percentage points).
RATIO_TOLERANCE = 0.005


def _nonzeros(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += int(torch.count_nonzero(t.detach()))
    return total


def _stating(block: nn.Module) -> list[nn.Module]:
    """The modules of ``block`` that state their own parameter count (``parameter_count()``: a
    quantized linear, whose codes, scales and zero points are storage, not parameters)."""
    return [m for m in block.modules() if hasattr(m, "parameter_count")]


def block_parameters(adapter: ModelAdapter, block: nn.Module) -> list[torch.Tensor]:
    """Every parameter and floating-point buffer of one block outside the norms the adapter
    names (a method may store an added matrix as a buffer: it counts all the same), and outside
    the modules that state their own count (``stated_parameters``)."""
    skipped = {id(m) for norm in adapter.norm_modules(block) for m in norm.modules()}
    skipped |= {id(m) for stating in _stating(block) for m in stating.modules()}
    tensors = []
    for module in block.modules():
        if id(module) in skipped:
            continue
        tensors += list(module.parameters(recurse=False))
        tensors += [b for b in module.buffers(recurse=False) if b.is_floating_point()]
    return tensors


def stated_parameters(block: nn.Module) -> int:
    """The parameters of the block's modules that state their count (``parameter_count()``)."""
    return sum(m.parameter_count() for m in _stating(block))


#: Bytes a stored value takes in a model served in half precision (fp16, bf16).
SERVED_VALUE_BYTES = 2


def stored_bytes(adapter: ModelAdapter, block: nn.Module) -> int:
    """Bytes one block's weights take as a serving engine stores them in half precision, norms
    left out as in r. A module that states its own storage (``storage_bytes()``: a packed 2:4 or
    quantized weight) counts that; an exactly 2:4 weight counts as sparse tensor cores keep it,
    the kept half of its values and a 2-bit position for each (one bit per element); every other
    tensor counts every element: unstructured zeros stored densely save nothing."""
    from harness.serving.sparse_kernels import is_two_four

    norms = {id(m) for norm in adapter.norm_modules(block) for m in norm.modules()}
    counted, total = set(), 0
    for module in block.modules():
        if id(module) in norms or id(module) in counted:
            continue
        if hasattr(module, "storage_bytes"):
            total += module.storage_bytes()
            counted |= {id(m) for m in module.modules()} | {id(t) for t in module.parameters()}
            continue
        for t in [*module.parameters(recurse=False), *(b for b in module.buffers(recurse=False) if b.is_floating_point())]:
            if id(t) in counted:
                continue
            counted.add(id(t))
            sparse = isinstance(module, nn.Linear) and t is module.weight and is_two_four(t.detach())
            total += t.numel() * SERVED_VALUE_BYTES // 2 + t.numel() // 8 if sparse else t.numel() * SERVED_VALUE_BYTES
    return total


@dataclass(frozen=True)
class ParameterCount:
    blocks: int  # nonzeros in decoder blocks outside norms: the basis of r
    norms: int
    embeddings: int
    lm_head: int  # 0 when tied to the embeddings
    total: int
    block_elements: int = 0  # elements of the same tensors, zeros included
    block_bytes: int = 0  # the same blocks as stored for serving in half precision (``stored_bytes``)

    @property
    def block_zero_fraction(self) -> float:
        """Exact zeros among the blocks' elements (≈5 % in a dequantised Q4 GGUF)."""
        return 1 - self.blocks / self.block_elements if self.block_elements else 0.0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def count_parameters(adapter: ModelAdapter) -> ParameterCount:
    per_block = [block_parameters(adapter, b) for b in adapter.blocks]
    stated = sum(stated_parameters(b) for b in adapter.blocks)
    blocks = sum(_nonzeros(tensors) for tensors in per_block) + stated
    elements = sum(t.numel() for tensors in per_block for t in {id(t): t for t in tensors}.values())
    elements += sum(m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
                    for b in adapter.blocks for m in _stating(b))
    norm_modules = [adapter.final_norm] + [n for b in adapter.blocks for n in adapter.norm_modules(b)]
    norm_tensors = [p for m in norm_modules for p in m.parameters()]
    embeddings = _nonzeros([adapter.embeddings.weight])
    lm_head = 0 if adapter.tied_embeddings else _nonzeros(adapter.lm_head.parameters())
    total = _nonzeros(adapter.model.parameters()) + stated + sum(
        _nonzeros([t for t in tensors if not isinstance(t, nn.Parameter)]) for tensors in per_block)
    stored = sum(stored_bytes(adapter, b) for b in adapter.blocks)
    return ParameterCount(blocks, _nonzeros(norm_tensors), embeddings, lm_head, total, elements, stored)


@dataclass(frozen=True)
class MeasuredRatio:
    ratio: float  # r over decoder blocks: the matched quantity
    whole_model: float  # the same over every parameter of the model
    dense: ParameterCount
    compressed: ParameterCount

    @property
    def memory_ratio(self) -> float:
        """1 − the blocks' stored bytes / the dense blocks' half-precision bytes (``stored_bytes``)."""
        return 1 - self.compressed.block_bytes / self.dense.block_bytes

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "whole_model_ratio": self.whole_model, "memory_ratio": self.memory_ratio,
                "params_dense": self.dense.to_dict(), "params": self.compressed.to_dict()}


def measure_ratio(dense: ParameterCount, compressed: ModelAdapter) -> MeasuredRatio:
    c = count_parameters(compressed)
    return MeasuredRatio(1 - c.blocks / dense.blocks, 1 - c.total / dense.total, dense, c)


def check_pattern(adapter: ModelAdapter, n_m: tuple[int, int]) -> None:
    """An N:M target is met when every group of M consecutive inputs of every block linear
    (in the input order the method pruned in, ``nm_input_order``, where it chose one) holds at
    most N nonzeros. Its ratio is then measured and reported, not enforced: on a
    model that already holds zeros it depends on the method (a group with fewer than N
    nonzeros loses none under a pure mask, while SparseGPT's updates refill it to N)."""
    n, m = n_m
    for name, linear in adapter.named_linears():
        weight = linear.weight.detach()
        order = getattr(linear, "nm_input_order", None)  # a mask chosen in a permuted column order (RIA)
        if order is not None:
            weight = weight[:, order]
        if weight.shape[1] % m or bool(((weight != 0).reshape(weight.shape[0], -1, m).sum(-1) > n).any()):
            raise RatioMismatch(f"{name} is not {n}:{m} sparse: some group of {m} inputs keeps more than {n}")


def check_ratio(measured: float, target: float, tolerance: float = RATIO_TOLERANCE,
                dense: ParameterCount | None = None) -> None:
    if abs(measured - target) > tolerance:
        why = ""
        if dense is not None and dense.block_zero_fraction > 1e-3:
            why = (f" The dense model already holds {dense.block_zero_fraction:.2%} exact zeros in its "
                   "decoder blocks (a quantised or pruned checkpoint?); r counts the nonzeros removed, "
                   "so a method that sizes its masks or widths by element count misses it.")
        raise RatioMismatch(
            f"measured ratio {measured:.4f} misses the target {target:.4f} by more than "
            f"±{tolerance:.4f}; the row is not a matched-ratio result.{why}")


class RatioMismatch(RuntimeError):
    pass


def validate_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must lie in (0, 1), got {ratio}")
    return ratio
