"""Which of torch's cuSPARSELt calls work on this GPU: one 4096 × 4096 2:4 fp16 product at 2048
tokens per case, each case in its own process (an illegal instruction poisons the CUDA context).

    python3 benchmarks/kernels/cusparselt_calls.py          # every case, one line each
    python3 benchmarks/kernels/cusparselt_calls.py fuse     # one case

2026-12-03, H200, torch 2.11 + cuSPARSELt 0.8: every product runs; the algorithm search fails
("internal error" in cusparseLtMatmulSearch) whenever the output is transposed, which is why
``harness.serving.sparse_kernels`` searches the row-major plan and copies its output.
"""

import subprocess
import sys

import torch

CASES = {
    "plain": "default algorithm, column-major output",
    "plain_bias": "the same with a bias",
    "fuse": "fuse_transpose_cusparselt: row-major output",
    "fuse_bias": "the same with a bias",
    "search": "_cslt_sparse_mm_search of the plain plan",
    "search_t": "_cslt_sparse_mm_search with transpose_result=True",
    "search_t_bias": "the same with a bias",
    "alg1": "algorithm 1 set by hand",
}


def run(case: str) -> None:
    from torch.sparse import to_sparse_semi_structured

    torch.manual_seed(0)
    keep_two_of_four = torch.tensor([1.0, 1.0, 0.0, 0.0], device="cuda").repeat(4096, 1024)
    weight = (torch.randn(4096, 4096, device="cuda") * keep_two_of_four).half()
    bias = torch.randn(4096, device="cuda").half() if case.endswith("bias") else None
    sparse = to_sparse_semi_structured(weight)
    x = torch.randn(2048, 4096, device="cuda").half()
    if case.startswith("fuse"):
        sparse.fuse_transpose_cusparselt = True
    if case.startswith("search"):
        alg = torch._cslt_sparse_mm_search(sparse.packed, x.t(), bias=bias, transpose_result=case.startswith("search_t"))
        print("searched algorithm", alg)
        sparse.alg_id_cusparselt = alg
    if case == "alg1":
        sparse.alg_id_cusparselt = 1
    y = torch.nn.functional.linear(x, sparse, bias)
    error = (y - torch.nn.functional.linear(x, weight, bias)).abs().max().item()
    torch.cuda.synchronize()
    print(f"max |error| {error:.3g} (fp16 rounding), output strides {y.stride()}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run(sys.argv[1])
    else:
        print(torch.__version__, "cuSPARSELt", torch.backends.cusparselt.version(), torch.cuda.get_device_name())
        for case, what in CASES.items():
            done = subprocess.run([sys.executable, __file__, case], capture_output=True, text=True, timeout=300)
            said = done.stdout.strip() if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{case} ({what}): {'ok' if done.returncode == 0 else 'FAILED'}: {said}")
