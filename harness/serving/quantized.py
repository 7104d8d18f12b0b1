"""Weight-only quantized linears: the form a quantized weight takes in a model, and its kernels.

A b-bit weight is stored as integer codes q ∈ [0, 2^b − 1], one scale s and one integer zero
point z per (output row, group of ``group_size`` consecutive input columns):

    W[i, j] ≈ s[i, g(j)] · (q[i, j] − z[i, g(j)])          g(j) = j // group_size

(``g_idx`` replaces g(j) when GPTQ's act-order quantized the columns in another order).
Zero is exactly representable (q = z), so a weight pruned before quantization stays zero,
and a 2:4 weight stays 2:4.

``QuantizedLinear.forward`` is the reference path: dequantise, then ``F.linear``. It is what
CPU tests and evaluations run, and what every kernel is checked against. On a GPU the speed
step swaps it for a maintained low-bit kernel where the format fits (``quantized_kernels``):

- 4 bits, asymmetric, contiguous groups of 32/64/128/256 → torch's tinygemm
  (``aten._weight_int4pack_mm``, the op torchao's ``Int4WeightOnlyConfig`` runs on), which
  reads bfloat16 activations and folds the zero point into a float offset,
  W = (q − 8)·s + (8 − z)·s;
- 8 bits, symmetric, one group per row → ``aten._weight_int8pack_mm`` (torchao's int8
  weight-only format: per-channel scales), or the int8 product as an expression inductor fuses;
- 4 or 8 bits in groups that divide the input width → gemlite's Triton kernels (GEMV for a
  few rows, split-K and tiled GEMMs above), where the optional ``gemlite`` package is installed
  (the ``gpu`` extra pins it).

Each product goes to whichever candidate times fastest for its shape at the phase's token
count, the reference path (dequantise, then the dense product) included (``kernel_for``);
any other format stays on the reference path. The speed result says which product went where.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.nn import functional as F

from harness.models.export import exportable

#: Bytes of a half-precision scale or zero point, as the kernels keep them.
HALF = 2


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (rows × cols, each < 2^bits) as bytes: two 4-bit codes per byte (low nibble first)
    for bits ≤ 4, one per byte otherwise."""
    codes = codes.to(torch.uint8)
    if bits > 4:
        return codes.contiguous()
    if codes.shape[1] % 2:
        codes = F.pad(codes, (0, 1))
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    if bits > 4:
        return packed
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)[:, :columns]


@exportable
class QuantizedLinear(nn.Module):
    """y = x·Ŵᵀ + b with Ŵ the dequantised weight (module docstring). Inference only.

    Buffers: ``qweight`` (packed codes, ``pack_codes``), ``scales`` (out × groups, floating),
    ``zeros`` (out × groups, integer zero points as uint8), ``g_idx`` (in, int32) only when
    the columns' groups are not contiguous, ``bias``. ``nonzeros``: the nonzero weights the
    linear had before it was quantized, which is what the compression ratio r counts (a
    weight rounded to zero is not a removed parameter).
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int,
                 symmetric: bool = False, bias: bool = False, act_order: bool = False,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"bits must lie in [2, 8], got {bits}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.symmetric = bits, symmetric
        self.group_size = group_size if group_size > 0 else in_features
        groups = -(-in_features // self.group_size)
        per_byte = 2 if bits <= 4 else 1
        self.register_buffer("qweight", torch.zeros(out_features, -(-in_features // per_byte), dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8, device=device))
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32, device=device) if act_order else None)
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self.nonzeros = out_features * in_features

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                   group_size: int, symmetric: bool, bias: torch.Tensor | None, nonzeros: int,
                   g_idx: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> QuantizedLinear:
        """The module for ``codes`` (out × in integers), ``scales`` and ``zeros`` (out × groups)."""
        out_features, in_features = codes.shape
        dtype = dtype or scales.dtype
        module = cls(in_features, out_features, bits, group_size, symmetric, bias is not None,
                     g_idx is not None, dtype, codes.device)
        module.qweight.copy_(pack_codes(codes, bits))
        module.scales.copy_(scales)
        module.zeros.copy_(zeros.round().to(torch.uint8))
        if g_idx is not None:
            module.g_idx.copy_(g_idx)
        if bias is not None:
            module.bias.copy_(bias.detach())
        module.nonzeros = int(nonzeros)
        return module

    @property
    def weight_groups(self) -> torch.Tensor:
        """The group of every input column."""
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.in_features, device=self.qweight.device) // self.group_size

    def codes(self) -> torch.Tensor:
        return unpack_codes(self.qweight, self.bits, self.in_features)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Ŵ = s · (q − z), computed in float32, returned in ``dtype`` (default: the scales')."""
        groups = self.weight_groups
        scales, zeros = self.scales.float()[:, groups], self.zeros.float()[:, groups]
        return (scales * (self.codes().float() - zeros)).to(dtype or self.scales.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (a new tensor: writing to it changes nothing)."""
        return self.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def parameter_count(self) -> int:
        """What r counts for it: the weights it holds that were nonzero before quantizing, and
        the nonzero bias entries."""
        return self.nonzeros + (int(torch.count_nonzero(self.bias)) if self.bias is not None else 0)

    def storage_bytes(self, two_four: bool | None = None) -> int:
        """Bytes as a low-bit kernel keeps it: ``bits`` per code (a weight that is exactly 2:4
        keeps only its kept half, with a 2-bit position each, as sparse kernels store it), one
        half-precision scale per group and row, a zero point in half precision beside it where
        asymmetric (tinygemm's scale-and-offset pair), the column order where act-order
        scrambled the groups (int32), and the bias in half precision."""
        from harness.serving.sparse_kernels import is_two_four

        elements = self.out_features * self.in_features
        if two_four is None:
            two_four = is_two_four(self.codes().to(torch.int16) - self.zeros.to(torch.int16)[:, self.weight_groups])
        values = elements // 2 if two_four else elements
        total = -(-values * self.bits // 8) + (elements // 8 if two_four else 0)
        total += self.scales.numel() * HALF * (1 if self.symmetric else 2)
        total += 4 * self.in_features if self.g_idx is not None else 0
        return total + (self.out_features * HALF if self.bias is not None else 0)

    @staticmethod
    def can_stack(linears: list[QuantizedLinear]) -> bool:
        """Linears of one format (bits, groups, symmetry, contiguous groups) stack into one."""
        first = linears[0]
        return all((q.in_features, q.bits, q.group_size, q.symmetric, q.scales.dtype) ==
                   (first.in_features, first.bits, first.group_size, first.symmetric, first.scales.dtype)
                   and q.g_idx is None for q in linears)

    @classmethod
    def stack(cls, linears: list[QuantizedLinear]) -> QuantizedLinear:
        """One linear whose output rows are those of ``linears`` in order (serving-time fusion)."""
        first = linears[0]
        bias = any(q.bias is not None for q in linears)
        out = cls(first.in_features, sum(q.out_features for q in linears), first.bits, first.group_size,
                  first.symmetric, bias, False, first.scales.dtype, first.qweight.device)
        for name in ("qweight", "scales", "zeros"):
            getattr(out, name).copy_(torch.cat([getattr(q, name) for q in linears]))
        if bias:
            out.bias.copy_(torch.cat([q.bias if q.bias is not None else q.scales.new_zeros(q.out_features)
                                      for q in linears]))
        out.nonzeros = sum(q.nonzeros for q in linears)
        return out

    def export_spec(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "group_size": self.group_size, "symmetric": self.symmetric, "bias": self.bias is not None,
                "act_order": self.g_idx is not None, "nonzeros": self.nonzeros}

    @classmethod
    def rebuild(cls, adapter, path: str, spec: dict) -> QuantizedLinear:
        spec = dict(spec)
        nonzeros = spec.pop("nonzeros")
        module = cls(**spec, dtype=adapter.model.dtype, device="meta")
        module.nonzeros = nonzeros
        return module

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}")


class TinyGemmLinear(nn.Module):
    """A 4-bit ``QuantizedLinear`` on torch's tinygemm kernel (``aten._weight_int4pack_mm``).

    The kernel reads bfloat16 activations and, per (group, output row), a bfloat16 scale and
    offset with W = (q − 8)·s + offset; our zero point z becomes offset = s·(8 − z). Its input
    width must be a multiple of the group size and of 16 × ``inner_k_tiles``: a narrower weight
    (SmolLM2's 576 columns at groups of 128) is padded with zero-weight columns and each input
    with zeros, which changes no output.
    """

    def __init__(self, q: QuantizedLinear, inner_k_tiles: int = 8):
        super().__init__()
        if q.bits != 4 or q.g_idx is not None or q.group_size not in (32, 64, 128, 256):
            raise ValueError("tinygemm takes 4-bit weights in contiguous groups of 32, 64, 128 or 256")
        self.in_features, self.out_features, self.group_size = q.in_features, q.out_features, q.group_size
        tile = math.lcm(q.group_size, 16 * inner_k_tiles)
        self.padded = -(-q.in_features // tile) * tile
        codes = F.pad(q.codes(), (0, self.padded - q.in_features), value=8).to(torch.int32)
        nibbles = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8)  # the kernel's packing: even column high
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack(nibbles.contiguous(), inner_k_tiles))
        groups = self.padded // q.group_size
        scales = F.pad(q.scales.float(), (0, groups - q.scales.shape[1]), value=1.0)
        offsets = scales * (8 - F.pad(q.zeros.float(), (0, groups - q.zeros.shape[1]), value=8.0))
        self.register_buffer("scales_and_zeros", torch.stack([scales, offsets], -1).transpose(0, 1)
                             .contiguous().to(torch.bfloat16))
        self.register_buffer("bias", q.bias)

    kernel = "int4 tinygemm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.padded != self.in_features:
            rows = F.pad(rows, (0, self.padded - self.in_features))
        y = torch.ops.aten._weight_int4pack_mm(rows.to(torch.bfloat16), self.packed, self.group_size,
                                               self.scales_and_zeros).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)


class Int8WeightOnlyLinear(nn.Module):
    """An 8-bit symmetric, one-scale-per-row ``QuantizedLinear`` in torchao's int8 weight-only
    format: int8 weights, y = (x·Wᵀ_int8) ⊙ s, either on ``aten._weight_int8pack_mm``
    (``packed_op``) or as that expression in the step's graph, where inductor fuses the
    int8 → half conversion into the product (torchao's route on CUDA). ``packed_op=None``: the
    op where the torch build has it for the device."""

    def __init__(self, q: QuantizedLinear, packed_op: bool | None = None):
        super().__init__()
        if q.bits != 8 or not q.symmetric or q.group_size != q.in_features or q.g_idx is not None:
            raise ValueError("int8 weight-only takes symmetric 8-bit weights with one scale per row")
        self.in_features, self.out_features = q.in_features, q.out_features
        self.register_buffer("weight_int8", (q.codes().to(torch.int16) - 128).to(torch.int8).contiguous())
        self.register_buffer("scales", q.scales[:, 0].contiguous())
        self.register_buffer("bias", q.bias)
        self.packed_op = self._packed_op_works() if packed_op is None else packed_op

    def _packed_op_works(self) -> bool:
        probe = torch.zeros(1, self.in_features, dtype=self.scales.dtype, device=self.scales.device)
        try:
            torch.ops.aten._weight_int8pack_mm(probe, self.weight_int8, self.scales)
            return True
        except (RuntimeError, NotImplementedError):
            return False

    @property
    def kernel(self) -> str:
        return "int8 aten._weight_int8pack_mm" if self.packed_op else "int8 mm (inductor-fused dequant)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.packed_op:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scales.to(x.dtype))
        else:
            y = (rows @ self.weight_int8.t().to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)


class GemliteLinear(nn.Module):
    """A 4-bit, or 8-bit per-row, ``QuantizedLinear`` on gemlite's Triton kernels (``gemlite.GemLiteLinear``).

    gemlite's weight format is ours, W = s·(q − z) per (row, group) ("HQQ format"), with half
    precision scales; it folds the zero point into an offset, W = q·s + (−z·s), as tinygemm
    does. It takes groups that divide the input width (no narrower last group) and 16-bit
    activations; it picks its kernel by row count and reads tuned launch settings for the
    device from the configurations it ships (tuning on the first product otherwise).
    """

    def __init__(self, q: QuantizedLinear):
        super().__init__()
        import gemlite

        if q.bits not in (4, 8) or q.g_idx is not None or q.in_features % q.group_size or q.in_features % 32:
            raise ValueError("gemlite takes 4- or 8-bit weights in contiguous groups that divide the input width")
        if q.bits == 8 and q.group_size != q.in_features:
            # its 8-bit kernel in groups narrower than a row does not give the reference path's
            # products (tests/test_quant_kernels.py): 8 bits go to it one scale per row only
            raise ValueError("gemlite's 8-bit kernel is used with one scale per row only")
        if q.scales.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError("gemlite takes float16 or bfloat16 models")
        self.in_features, self.out_features, self.dtype = q.in_features, q.out_features, q.scales.dtype
        self.kernel = f"int{q.bits} gemlite"
        kind = gemlite.DType.FP16 if self.dtype == torch.float16 else gemlite.DType.BF16
        self.inner = gemlite.GemLiteLinear(q.bits, group_size=q.group_size, in_features=q.in_features,
                                           out_features=q.out_features, input_dtype=kind, output_dtype=kind)
        self.inner.pack(q.codes().contiguous(), q.scales, q.zeros.to(self.dtype),
                        None if q.bias is None else q.bias.to(self.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype)).to(x.dtype)


def _gemlite_available() -> bool:
    try:
        import gemlite  # noqa: F401
    except Exception:  # absent, or present without a working Triton
        return False
    return True


def _product_ms(module: nn.Module, tokens: int, dtype: torch.dtype, device: torch.device, repeats: int = 20) -> float:
    """Milliseconds of one product of ``module`` at ``tokens`` input rows, as the serving step
    runs it: ``repeats`` products captured in one CUDA graph and replayed, so a kernel whose
    launch costs more host time than its work (Python dispatch before a small GEMV) is not
    charged for it. A module that cannot be captured is timed eagerly, host time included."""
    x = torch.randn(tokens, module.in_features, device=device, dtype=dtype)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: autotuning, lazy initialisation
            for _ in range(3):
                module(x)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for _ in range(repeats):
                    module(x)
        except RuntimeError:
            graph = None
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if graph is not None:
            graph.replay()
        else:
            for _ in range(repeats):
                module(x)
        end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def kernel_for(q: QuantizedLinear, tokens: int | None, dtype: torch.dtype, timed: dict,
               times: dict | None = None) -> nn.Module | None:
    """The module that serves ``q`` at ``tokens`` rows per product: a kernel's, or None for the
    reference path (dequantise, then the dense product): whichever of them times fastest at that
    token count, replayed from a CUDA graph as the serving step runs it (``_product_ms``).
    tinygemm is built for a few rows (decode); at prefill's thousands of rows the dense product
    on the dequantised weight wins by far; the int8 format has two candidates,
    ``aten._weight_int8pack_mm`` and the int8 product as an expression; gemlite's kernels join
    where installed and the format fits. Each distinct (shape, format, tokens) is timed once
    (``timed`` keeps the choices, ``times`` each candidate's milliseconds) and later linears of
    that key build only the chosen module; ``tokens=None`` takes the format's torch kernel
    untimed. Raises for a format no kernel takes."""
    key = (f"{q.out_features}x{q.in_features}/w{q.bits}g{q.group_size}{'s' if q.symmetric else ''}"
           f"{'-act' if q.g_idx is not None else ''}@{tokens}")
    if tokens is not None and key in timed:
        return _build(q, timed[key])
    kernels, reasons = [], []
    for build in (TinyGemmLinear, Int8WeightOnlyLinear, GemliteLinear):
        if build is GemliteLinear and not (q.qweight.is_cuda and _gemlite_available()):
            continue
        try:
            kernels.append(build(q))
        except (ValueError, NotImplementedError) as error:  # the format is not this kernel's
            reasons.append(str(error))
    if not kernels:
        raise ValueError("; ".join(reasons))
    if tokens is None:
        return kernels[0]
    candidates: dict[str, nn.Module | None] = {"dequantize": None}
    for kernel in kernels:
        candidates[kernel.kernel] = kernel
        if isinstance(kernel, Int8WeightOnlyLinear) and kernel.packed_op:  # the op, and the expression
            expression = Int8WeightOnlyLinear(q, packed_op=False)
            candidates[expression.kernel] = expression
    ms = {name: _product_ms(module or q, tokens, dtype, q.qweight.device) for name, module in candidates.items()}
    timed[key] = min(ms, key=ms.get)
    if times is not None:
        times[key] = {name: round(value, 5) for name, value in ms.items()}
    return candidates[timed[key]]


def _build(q: QuantizedLinear, name: str) -> nn.Module | None:
    """The candidate ``kernel_for`` named ``name`` (a module's ``kernel``, or "dequantize")."""
    if name == "dequantize":
        return None
    if name == TinyGemmLinear.kernel:
        return TinyGemmLinear(q)
    if name.startswith("int8 ") and not name.endswith("gemlite"):
        return Int8WeightOnlyLinear(q, packed_op=name == "int8 aten._weight_int8pack_mm")
    return GemliteLinear(q)


@contextlib.contextmanager
def quantized_kernels(model: nn.Module, tokens: int | None = None, dtype: torch.dtype = torch.float16):
    """Swap every ``QuantizedLinear`` for the module that serves it at ``tokens`` rows per product
    (``kernel_for``) for the duration of the ``with``; yields how many went where, what each
    candidate timed per shape, and why others stayed on the reference path; the originals come
    back afterwards."""
    routes: dict[str, int] = {}
    skipped: dict[str, int] = {}
    timed: dict[str, str] = {}
    times: dict[str, dict[str, float]] = {}
    swapped = []
    for path, module in list(model.named_modules()):
        if not isinstance(module, QuantizedLinear):
            continue
        try:
            new = kernel_for(module, tokens, dtype, timed, times)
        except Exception as error:  # a format no kernel takes: reference path, said in the result
            reason = f"{type(error).__name__}: {str(error)[:80]}"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        name = new.kernel if new is not None else "dequantize + dense product (timed fastest here)"
        routes[name] = routes.get(name, 0) + 1
        if new is not None:
            parent, _, attr = path.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, attr, new)
            swapped.append((owner, attr, module))
    try:
        yield {"converted": sum(n for k, n in routes.items() if not k.startswith("dequantize")), "routes": routes,
               "skipped": skipped, "timed": timed, "candidates_ms": times}
    finally:
        for owner, attr, module in swapped:
            setattr(owner, attr, module)
