"""2:4 sparse weights on torch's semi-structured kernels, as a serving step runs them.

A 2:4 model is measured on cuSPARSELt (or CUTLASS) products, not on dense kernels that
multiply zeros: every exactly-2:4 block linear (a fused group's stacked linear counts as one,
``harness.fusion``) becomes a ``SemiStructuredLinear``. Two ways to run cuSPARSELt:

- algorithm search (the default, ``ALGORITHM_SEARCH = True``): before each phase every
  distinct product gets the algorithm cuSPARSELt times fastest at that phase's token count,
  and its (column-major) output is copied once;
- transposed output (``ALGORITHM_SEARCH = False``, ``harness bench speed
  --sparse-transposed-output``): cuSPARSELt writes the product row-major itself, no copy, but
  on its default algorithm: cuSPARSELt 0.8 (torch 2.11, H200) fails the search of that plan
  ("internal error when calling cusparseLtMatmulSearch").

Measured 2026-12-03 on an H200 (2 blocks of the 7B shape, prefill@8x2048, compiled; each speedup
over dense timed in the same run): transposed output 0.70× (its default algorithm runs split-K
kernels, "segment_k_on", 54 % of the step); searched algorithms with the copy 1.45× (but that run
shared the GPU with another job: its dense ran at 563k tokens/s against 722k alone; to re-measure).
"""

from __future__ import annotations

import torch
from torch import nn

from harness.adapters import ModelAdapter
from harness.fusion import fused_groups

ALGORITHM_SEARCH = True  # see the module docstring; set per process by the speed bench


def is_two_four(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive inputs of every row holds at most 2 nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


class SemiStructuredLinear(nn.Module):
    """A linear layer on a semi-structured sparse weight; inputs are flattened to 2-D first
    (the sparse tensor implements matrix products, not the batched ones a 3-D input needs).

    cuSPARSELt computes W·xᵀ (the sparse operand comes first), so y = x·Wᵀ is its result
    transposed. Unless told otherwise (torch ≤ 2.12 does not tell it), it writes W·xᵀ
    row-major and y comes back as a column-major view; every elementwise op after it would
    read with a stride, so ``contiguous()`` below copies it once (≈6 % of a 7B MLP product
    at prefill). Marked ``fuse_transpose_cusparselt`` (``ALGORITHM_SEARCH = False``),
    cuSPARSELt writes y row-major itself and the copy is free, but then only its default
    algorithm runs, which costs far more on Hopper (module docstring).
    """

    def __init__(self, linear: nn.Linear):
        from torch.sparse import to_sparse_semi_structured

        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
        if hasattr(self.weight, "fuse_transpose_cusparselt"):  # read by the cuSPARSELt backend only
            self.weight.fuse_transpose_cusparselt = not ALGORITHM_SEARCH
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x.reshape(-1, self.in_features), self.weight, self.bias)
        return out.contiguous().view(*x.shape[:-1], self.out_features)


def check_sparse_backend(backend: str, device: torch.device) -> None:
    """Refuse a 2:4 backend the GPU cannot run before anything is built: torch's CUTLASS
    semi-structured kernels are compiled for compute capability 8.x only (Ampere, Ada); on a
    Hopper GPU (9.0) their first product fails with ``sparse_semi_structured_mad_op``."""
    if backend == "cutlass" and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major != 8:
            raise ValueError(f"--sparse-backend cutlass: torch's CUTLASS 2:4 kernels run on compute capability "
                             f"8.x only, and {torch.cuda.get_device_name(device)} is {major}.{minor}; "
                             "use cusparselt (the default)")


def tune_sparse_kernels(adapter: ModelAdapter, tokens: int) -> dict[str, int]:
    """Give every cuSPARSELt weight the algorithm cuSPARSELt times fastest for its product at
    ``tokens`` rows of input (``torch._cslt_sparse_mm_search``). The default, 0, is not the
    fastest on every LLM shape (pytorch/pytorch#115178 found another one faster on large-weight,
    small-activation products), and the best one depends on the token count, so each phase is
    tuned before it is measured. One search per distinct (shape, bias) serves every block.
    Returns ``{"OUTxIN@TOKENS": alg_id}``; the CUTLASS backend has nothing to choose, nor has
    a weight with the transposed output (cuSPARSELt cannot search it: module docstring)."""
    chosen: dict[str, int] = {}
    tuned = []
    for module in adapter.model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, SemiStructuredLinear) or getattr(weight, "BACKEND", None) != "cusparselt":
            continue  # CUTLASS's weights (same class tree, same attributes) have no algorithms to choose
        if getattr(weight, "fuse_transpose_cusparselt", False):
            continue  # transposed output: the default algorithm (its search fails, module docstring)
        key = f"{module.out_features}x{module.in_features}@{tokens}" + ("+bias" if module.bias is not None else "")
        if key not in chosen:
            # the product nn.functional.linear runs: the weight times the input transposed
            # (rows padded to the kernels' multiple)
            rows = -(-tokens // 16) * 16
            probe = torch.randn(rows, module.in_features, dtype=weight.dtype, device=weight.packed.device)
            found = torch._cslt_sparse_mm_search(weight.packed, probe.t(), bias=module.bias)
            chosen[key] = int(found[0] if isinstance(found, tuple) else found)
        tuned.append((weight, chosen[key]))
    for weight, alg_id in tuned:  # only once every search has succeeded: all tuned, or none
        weight.alg_id_cusparselt = alg_id
    return chosen


def to_semi_structured(adapter: ModelAdapter) -> dict:
    """Swap every exactly-2:4 block linear for torch's semi-structured sparse weight (GPU, fp16/bf16);
    a fused group's stacked linear (``harness.fusion``) is one linear here, and 2:4 when its parts are.

    Returns how many linears of the model now run on sparse kernels (converted by this call or
    an earlier one: after a failed fusion check the unfused re-measure converts the rest), and
    why others were not (shape limits of the kernels, dtype). The model must sit on a CUDA device.
    """
    skipped = {}

    def convert(linear: nn.Linear, put) -> None:
        if not is_two_four(linear.weight):
            skipped["not 2:4"] = skipped.get("not 2:4", 0) + 1
            return
        try:
            put(SemiStructuredLinear(linear))
        except Exception as error:  # e.g. a dimension the kernels do not tile
            reason = f"{type(error).__name__}: {str(error)[:80]}"
            skipped[reason] = skipped.get(reason, 0) + 1

    for block in adapter.blocks:
        for role, linear in adapter.linears(block).items():
            if isinstance(linear, nn.Linear):  # not a FusedMember: its group is converted below
                convert(linear, lambda new, block=block, role=role: adapter.replace_linear(block, role, new))
    for group in fused_groups(adapter.model):
        convert(group.fused, lambda new, group=group: setattr(group, "fused", new))
    sparse = [module for module in adapter.model.modules() if isinstance(module, SemiStructuredLinear)]
    backends = sorted({module.weight.BACKEND for module in sparse})  # "cusparselt" or "cutlass"
    return {"converted": len(sparse), "backend": ",".join(backends) or None, "skipped": skipped}
