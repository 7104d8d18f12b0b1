"""Time cuSPARSELt's algorithms by hand on the transposed-output plan, whose own search fails
on torch 2.11 + cuSPARSELt 0.8 (cusparselt_calls.py), for the four products of a Llama-2-7B block
at prefill@8x2048 (16,384 tokens), beside dense and the searched row-major plan with its copy.

    python3 benchmarks/kernels/cusparselt_algs.py     # one line per product and plan, in ms
"""

from functools import partial

import torch

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}
TOKENS = 16384


def sparse(packed, x, transposed: bool, config: dict, copy: bool = False) -> torch.Tensor:
    out = torch._cslt_sparse_mm(packed, x.t(), transpose_result=transposed, **config)
    return out.t().contiguous() if copy else out


def ms(product, reps: int = 20) -> float:
    product()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        product()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    print(
        torch.__version__,
        "cuSPARSELt",
        torch.backends.cusparselt.version(),
        torch.cuda.get_device_name(),
    )
    for name, (out_f, in_f) in SHAPES.items():
        keep = torch.tensor([1.0, 1.0, 0.0, 0.0], device="cuda").repeat(out_f, in_f // 4)
        weight = (torch.randn(out_f, in_f, device="cuda") * keep).half()
        x = torch.randn(TOKENS, in_f, device="cuda").half()
        packed = torch._cslt_compress(weight)
        reference = torch.nn.functional.linear(x, weight)
        alg, split_k, mode, max_alg = torch._C._cusparselt.mm_search(
            packed, x.t(), None, None, None, False
        )
        searched = {"alg_id": alg, "split_k": split_k, "split_k_mode": int(mode)}
        line = [
            f"{name} {out_f}x{in_f}: dense {ms(partial(torch.nn.functional.linear, x, weight)):.3f}",
            f"row-major {searched} {ms(partial(sparse, packed, x, False, searched)):.3f}",
            f"+copy {ms(partial(sparse, packed, x, False, searched, True)):.3f}",
        ]
        for alg_id in range(max_alg):
            for split in (1, split_k):
                config = {"alg_id": alg_id, "split_k": split} | (
                    {"split_k_mode": int(mode)} if split != 1 else {}
                )
                try:
                    out = sparse(packed, x, True, config)
                    error = (out - reference).abs().max().item()
                    line.append(
                        f"T{config} {ms(partial(sparse, packed, x, True, config)):.3f}"
                        + ("" if error < 1 else f" WRONG {error:.3g}")
                    )
                except RuntimeError as failure:
                    line.append(f"T{config} failed: {str(failure).splitlines()[0][:80]}")
                if split_k == 1:
                    break
        print("\n  ".join(line), flush=True)


if __name__ == "__main__":
    main()
