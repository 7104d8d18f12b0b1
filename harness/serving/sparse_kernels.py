"""2:4 sparse weights on sparse tensor cores, as a serving step runs them.

A 2:4 model is measured on cuSPARSELt (or CUTLASS) products, not on dense kernels that
multiply zeros: every exactly-2:4 block linear (a fused group's stacked linear counts as one,
``harness.serving.fusion``) becomes a ``SemiStructuredLinear``.

cuSPARSELt computes W·xᵀ (the sparse operand comes first); y = x·Wᵀ is that product
transposed. Its plan has two knobs, which the module states rather than leave to torch's
tensor subclass (torch releases differ in the plan they run under ``nn.functional.linear``, and
an algorithm found for one plan is not valid for the other):

- row-major W·xᵀ (the default): before each phase every distinct product gets the
  configuration cuSPARSELt times fastest at that phase's token count, its algorithm and split-K
  settings (``tune_sparse_kernels``), and y, a column-major view, is copied once (where:
  ``ServingConfig.sparse_output_copy``);
- transposed output (``ServingConfig.sparse_transposed_output``): cuSPARSELt writes y row-major
  itself, no copy, but on its default algorithm, since cuSPARSELt cannot search that plan.

Where the copy goes matters: inductor folds a column-major read into the consumer, which is free
for a pointwise consumer it tiles in 2-D (SiLU·mul, the residual add) but not for q/k/v, whose
consumer, RoPE and the KV cache's ``index_copy_`` (an indirect store), then reads the product one
strided element at a time; so by default the q/k/v products copy their output in an op of their
own (``rows_from_columns``). ``leaderboards/`` holds the measurements behind these defaults.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from harness.models.adapters import ModelAdapter
from harness.serving.fusion import fused_groups
from harness.serving.step import tensor_bytes


def split_k_mode_keyword() -> str | None:
    """How this torch names ``_cslt_sparse_mm``'s split-K mode: ``split_k_mode`` (an int: torch
    2.11, 2.13), ``split_k_one_kernel`` (a bool: earlier releases), or None where it has neither."""
    op = getattr(torch.ops.aten, "_cslt_sparse_mm", None)
    names = [arg.name for arg in op.default._schema.arguments] if op is not None else []
    return next((name for name in ("split_k_mode", "split_k_one_kernel") if name in names), None)


SPLIT_K_MODE = split_k_mode_keyword()


@torch.library.custom_op("harness::rows_from_columns", mutates_args=())
def rows_from_columns(columns: torch.Tensor) -> torch.Tensor:
    """The (tokens, out) row-major copy of a (out, tokens) row-major product, as an op of its
    own: inductor cannot fold it into the consumer. The copy itself is inductor's tiled
    transpose (eager ``t().contiguous()`` reads uncoalesced, ~10× slower: pytorch#113560)."""
    return _tiled_transpose()(columns) if columns.is_cuda else columns.t().contiguous()


@rows_from_columns.register_fake
def _(columns: torch.Tensor) -> torch.Tensor:
    return columns.new_empty(columns.shape[1], columns.shape[0])


@functools.cache
def _tiled_transpose():
    return torch.compile(lambda columns: columns.t().contiguous(), dynamic=False)


def is_two_four(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive inputs of every row holds at most 2 nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def padded_tokens(tokens: int, dtype: torch.dtype) -> int:
    """The token count cuSPARSELt is given: a multiple of its dense operand's tile (8 rows in
    fp16/bf16), as torch pads it."""
    multiple = torch.sparse.SparseSemiStructuredTensorCUSPARSELT._DTYPE_SHAPE_CONSTRAINTS[dtype].dense_min_rows
    return -(-tokens // multiple) * multiple


class SemiStructuredLinear(nn.Module):
    """y = x·Wᵀ + b with W 2:4-compressed, on sparse tensor cores; inputs are flattened to 2-D.

    cuSPARSELt (the default backend): the compressed weight is a plain buffer, ``packed``, and
    each forward is one ``torch._cslt_sparse_mm`` with this module's plan: ``transpose_result``
    and ``config``, the algorithm and split-K keywords the search chose (module docstring).
    CUTLASS (``--sparse-backend cutlass``, compute capability 8.x only): torch's semi-structured
    tensor as the weight, under ``linear``. Inference only: nothing in it is trainable.
    """

    def __init__(self, linear: nn.Linear, own_copy: bool = False, backend: str = "cusparselt",
                 transposed_output: bool = False):
        super().__init__()
        self.own_copy = own_copy  # the output's row-major copy as an op of its own
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # inference only: cuSPARSELt's product has no backward, and a bias that requires grad
        # makes torch.compile trace a training graph through it
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())
        weight = linear.weight.detach()
        self.backend = backend
        if backend == "cutlass":
            with _cutlass_layout():
                self.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(weight), requires_grad=False)
        else:
            # the kernels' shape and dtype limits, with torch's message (the caller reports it)
            torch.sparse.SparseSemiStructuredTensorCUSPARSELT._validate_device_dim_dtype_shape(weight)
            self.register_buffer("packed", torch._cslt_compress(weight))
            self.transpose_result, self.config = transposed_output, {"alg_id": 0}

    def storage_bytes(self) -> int:
        """Bytes it keeps: the compressed weight as the backend stores it, and the bias."""
        weight = self.packed if self.backend == "cusparselt" else self.weight
        return tensor_bytes(weight) + (tensor_bytes(self.bias) if self.bias is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.backend == "cutlass":
            y = nn.functional.linear(rows, self.weight, self.bias)
        else:
            tokens = rows.shape[0]
            padded = padded_tokens(tokens, rows.dtype)
            if padded != tokens:
                rows = nn.functional.pad(rows, (0, 0, 0, padded - tokens))
            out = torch._cslt_sparse_mm(self.packed, rows.t(), bias=self.bias,
                                        transpose_result=self.transpose_result, **self.config)
            if self.transpose_result:
                y = out[:tokens]  # (tokens, out_features)
            else:
                y = (rows_from_columns(out) if self.own_copy else out.t())[:tokens]
        return y.contiguous().view(*x.shape[:-1], self.out_features)


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


def search_product(packed: torch.Tensor, dense: torch.Tensor, bias: torch.Tensor | None) -> dict[str, int]:
    """cuSPARSELt's fastest configuration of one product (row-major output), as keywords of
    ``_cslt_sparse_mm``: its algorithm, and the split-K settings its search chose with it
    (``torch._C._cusparselt.mm_search``; the older ``_cslt_sparse_mm_search`` returns the
    algorithm alone, so a product would run the found algorithm without its split-K)."""
    cusparselt = getattr(torch._C, "_cusparselt", None)
    if hasattr(cusparselt, "mm_search") and SPLIT_K_MODE:
        alg_id, split_k, split_k_mode, _max_alg_id = cusparselt.mm_search(packed, dense, bias, None, None, False)
        mode = split_k_mode if isinstance(split_k_mode, bool) else int(split_k_mode)
        return {"alg_id": int(alg_id), "split_k": int(split_k), SPLIT_K_MODE: mode}
    return {"alg_id": int(torch._cslt_sparse_mm_search(packed, dense, bias=bias))}


def tune_sparse_kernels(adapter: ModelAdapter, tokens: int) -> dict[str, dict[str, int]]:
    """Give every cuSPARSELt product the configuration cuSPARSELt times fastest at ``tokens``
    rows of input (``search_product``). The default, algorithm 0 without split-K, is not the
    fastest on every LLM shape (pytorch/pytorch#115178 found another algorithm faster on
    large-weight, small-activation products), and the best one depends on the token count, so
    each phase is tuned before it is measured. One search per distinct (shape, bias) serves
    every block. Returns ``{"OUTxIN@TOKENS": config}``; CUTLASS has nothing to choose, nor has a
    transposed-output plan (cuSPARSELt cannot search it: module docstring)."""
    chosen: dict[str, dict[str, int]] = {}
    tuned = []
    for module in adapter.model.modules():
        if not isinstance(module, SemiStructuredLinear) or module.backend != "cusparselt" or module.transpose_result:
            continue
        key = f"{module.out_features}x{module.in_features}@{tokens}" + ("+bias" if module.bias is not None else "")
        if key not in chosen:
            # the very product forward runs: the weight times the (padded) input transposed
            packed = module.packed
            probe = torch.randn(padded_tokens(tokens, packed.dtype), module.in_features,
                                dtype=packed.dtype, device=packed.device)
            chosen[key] = search_product(packed, probe.t(), module.bias)
        tuned.append((module, chosen[key]))
    for module, config in tuned:  # only once every search has succeeded: all tuned, or none
        module.config = dict(config)
    return chosen


@contextlib.contextmanager
def _cutlass_layout():
    """torch converts a weight to CUTLASS's layout while its class-wide switch says so."""
    tensor = torch.sparse.SparseSemiStructuredTensor
    before, tensor._FORCE_CUTLASS = tensor._FORCE_CUTLASS, True
    try:
        yield
    finally:
        tensor._FORCE_CUTLASS = before


def to_semi_structured(adapter: ModelAdapter, backend: str = "cusparselt", transposed_output: bool = False,
                       output_copy: str = "attention") -> dict:
    """Swap every exactly-2:4 block linear for a ``SemiStructuredLinear`` (GPU, fp16/bf16); a
    fused group's stacked linear (``harness.serving.fusion``) is one linear here, and 2:4 when its parts are.

    Returns how many linears of the model now run on sparse kernels (converted by this call or
    an earlier one: after a failed fusion check the unfused re-measure converts the rest), and
    why others were not (shape limits of the kernels, dtype). The model must sit on a CUDA device.
    """
    skipped = {}
    attention = set(adapter.arch.attention_inputs)

    def own_copy(roles) -> bool:
        return output_copy == "all" or (output_copy == "attention" and bool(attention & set(roles)))

    def convert(linear: nn.Linear, put, roles) -> None:
        if not is_two_four(linear.weight):
            skipped["not 2:4"] = skipped.get("not 2:4", 0) + 1
            return
        try:
            put(SemiStructuredLinear(linear, own_copy(roles), backend, transposed_output))
        except Exception as error:  # e.g. a dimension the kernels do not tile
            reason = f"{type(error).__name__}: {str(error)[:80]}"
            skipped[reason] = skipped.get(reason, 0) + 1

    for block in adapter.blocks:
        for role, linear in adapter.linears(block).items():
            if isinstance(linear, nn.Linear):  # not a FusedMember: its group is converted below
                convert(linear, lambda new, block=block, role=role: adapter.replace_linear(block, role, new), [role])
    for group in fused_groups(adapter.model):
        convert(group.fused, lambda new, group=group: setattr(group, "fused", new), group.roles)
    sparse = [module for module in adapter.model.modules() if isinstance(module, SemiStructuredLinear)]
    backends = sorted({module.backend for module in sparse})  # "cusparselt" or "cutlass"
    return {"converted": len(sparse), "backend": ",".join(backends) or None, "skipped": skipped,
            "own_copy": sum(module.own_copy for module in sparse), "output_copy": output_copy}
