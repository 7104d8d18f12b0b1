"""How the serving step whose speed is measured is built: one value, passed from the command
line or a sweep file's ``[serving]`` table to every speed measurement (``harness run --eval
speed``, matched-speed searches, ``harness bench speed``, Ray cells), and recorded with every
speed row and in the speed evaluation's spec (so rows measured otherwise are another protocol).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: SDPA kernels a step may be pinned to (``torch.nn.attention.SDPBackend`` names, lower case).
ATTENTION_KERNELS = ("flash_attention", "efficient_attention", "cudnn_attention", "math")
#: Whose kernels run a decode step's one-row products and single-query attention on a GPU.
DECODE_KERNELS = ("triton", "torch")
COMPILE_SCOPES = ("step", "blocks")
SPARSE_BACKENDS = ("cusparselt", "cutlass")
SPARSE_OUTPUT_COPIES = ("none", "attention", "all")


@dataclass(frozen=True)
class ServingConfig:
    """Every setting that changes how a measured step runs (the defaults are the baseline every
    committed speed table uses: a serving engine's compiled step)."""

    #: torch.compile the step before its CUDA graph is captured; None: on a GPU only (on a CPU
    #: inductor builds C++ for minutes, and nobody serves from there).
    compile: bool | None = None
    #: inductor's mode ("max-autotune-no-cudagraphs" autotunes the products; the graph is ours).
    compile_mode: str = "default"
    #: "step": the whole step as one graph; "blocks": each decoder block on its own (blocks of one
    #: shape share a compiled graph, but a block's last add cannot fuse with the next block's norm).
    compile_scope: str = "step"
    #: inductor settings patched in while the step compiles (``torch._inductor.config`` names).
    inductor: dict[str, Any] = field(default_factory=dict)
    #: pin SDPA to one kernel; None: torch's own choice.
    attention_kernel: str | None = None
    #: "triton": each one-row product and single-query attention shape on the faster of torch's
    #: kernel and ``harness.serving.decode_kernels``' (timed when first seen); "torch": torch's alone.
    decode_kernels: str = "triton"
    #: q/k/v and gate/up as one product each, as serving engines store them.
    fuse: bool = True
    #: 2:4 weights on sparse tensor cores (else they run dense kernels, zeros multiplied).
    sparse_kernels: bool = True
    #: quantized weights on low-bit kernels (int4 tinygemm, int8 weight-only) where their format
    #: fits (else dequantised before every product: the reference path).
    quant_kernels: bool = True
    #: torch's 2:4 kernels: cuSPARSELt, or CUTLASS (compute capability 8.x only).
    sparse_backend: str = "cusparselt"
    #: cuSPARSELt writes each 2:4 product's output transposed on its default algorithm (no copy,
    #: no algorithm search); default: each product's algorithm searched per phase, output copied.
    sparse_transposed_output: bool = False
    #: which 2:4 products copy their column-major output to rows in an op of their own instead of
    #: inside inductor's fused consumer: the attention inputs (q/k/v), all, or none.
    sparse_output_copy: str = "attention"

    def __post_init__(self) -> None:
        choices = {"compile_scope": COMPILE_SCOPES, "decode_kernels": DECODE_KERNELS,
                   "sparse_backend": SPARSE_BACKENDS, "sparse_output_copy": SPARSE_OUTPUT_COPIES,
                   "attention_kernel": (None, *ATTENTION_KERNELS)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"serving {name} must be one of {', '.join(map(str, allowed))}; "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServingConfig:
        """From a sweep file's ``[serving]`` table, refusing unknown keys by name."""
        known = {f.name for f in fields(cls)}
        if unknown := set(values) - known:
            raise ValueError(f"unknown serving settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def compiles(self, on_gpu: bool) -> bool:
        return on_gpu if self.compile is None else self.compile

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The default settings: the serving baseline every speed table is measured against.
BASELINE = ServingConfig()
