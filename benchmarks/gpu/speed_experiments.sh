#!/usr/bin/env bash
# Issue 18's experiments on the 7B shape in one device call (random weights: nothing to carry
# but the wheels): where dense decode loses to the HBM roofline and where 2:4 prefill loses to
# dense. Each line is one `harness bench speed` run (dense re-measured in each, same process);
# JSON rows land in $OUT. Each row costs ~60 s on an H200 (compile 24–36 s of it): a 10-minute
# call holds about 8 rows: run `gpu-check` first, then `prefill24` (3 rows) and `decode` (4 rows,
# autotuning last: it compiles longest) in a call, then `full-decode`, `full-prefill` and
# `full-match` in a call each, `full-match-2-4` with `full-prefill` (the tables of 2026-12-04 took
# 1,662 s of device time: `copy full-prefill` 496 s, `full-decode` 301 s, the matches 575 + 192 s;
# with PDL, session 12: `full-decode` was cut at 330 s before its 2:4 rows: give it a call alone;
# session 13: `full-decode` 355 s, `full-decode1` 232 s, `decode-kernels` 160-254 s; session 14:
# `decode-kernels` 122-173 s, `full-decode1` 250-307 s).
# Call: carry [.device/whl]
#   python3 -m pip install -q --no-index --no-deps --target /tmp/dev/site .device/whl/*.whl && \
#   PYTHONPATH=/tmp/dev/site bash benchmarks/gpu/speed_experiments.sh [EXPERIMENT ...]
# The `full-*` experiments' rows are the tables of leaderboards/llama-2-7b-shape/: their JSON
# ($OUT/speed-*.json, $OUT/match-*.json) goes there as speed_llama-2-7b_<gpu>.json and
# match_llama-2-7b_<gpu>.json; `harness bench table FILE ...` prints the tables for the .md files.
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-/tmp/dev/site}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true
out=${OUT:-/tmp/out}; mkdir -p "$out"
# BENCH_ARGS (e.g. "--compile-scope blocks") is added to every run: the settings the experiments chose
bench() { local name=$1; shift; echo "== $name: harness bench speed $* ${BENCH_ARGS:-}"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  # a run longer than BENCH_S (default 240 s; the full tables 570 s) is cut: the call goes on to the next
  # the whole output also lands in $OUT/NAME.log: a failed row's traceback is read there, not in the call's tail
  timeout "${BENCH_S:-240}" python3 -m harness.cli bench speed --shape llama-2-7b "$@" ${BENCH_ARGS:-} \
    --json "$out/$name.json" 2>&1 \
    | grep -v "it/s\]$" | tee "$out/$name.log" || true; }
for experiment in ${@:-prefill24}; do
  case $experiment in
    gpu-check)  # first in a call, ~1 min: the GPU-only tests (2:4 products equal the masked dense ones,
                # tuned algorithms too) and a 2-block 2:4 prefill row, so a broken sparse path shows its
                # traceback at once (2026-12-03: the 7B 2:4 prefill row failed and its output was lost)
      python3 -m pytest -q -p no:cacheprovider tests/test_throughput.py -k "semi_structured or tuned_sparse" \
          2>&1 | tail -60 | tee "$out/gpu-check-tests.log" || true
      bench gpu-check --methods dense,sparsegpt --pattern 2:4 --phases prefill@8x2048 --layers 2 --profile
      bench gpu-check-transposed --methods sparsegpt --pattern 2:4 --phases prefill@8x2048 --layers 2 \
          --sparse-transposed-output ;;
    decode)     # dense decode@1x512 against the roofline (2026-12-03, H200, step scope, fused:
                # 72.5 % of it, counted by decode_read_bytes):
                # where the time goes; autotuned products (max-autotune reached 87 % on the H100 in
                # session 2, likely by choosing Triton GEMV templates, into which inductor can fuse
                # the pointwise neighbours: fewer small kernels), compiled per block so that
                # autotuning runs once per distinct shape (4 per phase); regional compile alone;
                # Hopper's programmatic dependent launch (kernels overlap their neighbours' tails)
      bench decode-fused --methods dense --phases decode@1x512 --profile
      bench decode-autotune --methods dense --phases decode@1x512 --compile-scope blocks \
          --compile-mode max-autotune-no-cudagraphs --profile
      bench decode-blocks --methods dense --phases decode@1x512 --compile-scope blocks
      # (not `decompose_mem_bound_mm`: inductor decomposes only M ≥ 10240 products with tiny N, K
      # on CUDA, never a GEMV; not `coordinate_descent_tuning` alone: tried 2026-12-03b, 226.9
      # tok/s = 71.9 % against 72.5 % without it (session 6's row), compile 71 s against 36 s)
      bench decode-pdl --methods dense --phases decode@1x512 --inductor triton.enable_pdl=true ;;
    roofline)   # dense decode@1x512 against the roofline in the default (step) scope: its per-op profile and
                # Hopper's programmatic dependent launch (each Triton kernel starts while its predecessor
                # drains; inductor's `triton.enable_pdl`), two rows, ~2 min (2026-12-04: 73.8 % without,
                # 77.3 % with: PDL is the default on Hopper since, so the first row turns it off)
      bench decode-profile --methods dense --phases decode@1x512 --profile --inductor triton.enable_pdl=false
      bench decode-pdl --methods dense --phases decode@1x512 --inductor triton.enable_pdl=true ;;
    attention)  # dense decode@1x512's attention (cuDNN's flash kernel by torch's choice: 0.28 ms of the 4.32 ms
                # step for 0.25 GiB of cache, 22 % of copy bandwidth) against SDPA's other kernels, each with
                # PDL (77.3 % of the roofline on cuDNN, 2026-12-04); the flash row prefills too; and 2:4 on
                # 2 blocks with PDL, so that the tables' call cannot die of it (~5 min). 2026-12-04:
                # memory-efficient 69.6 %, math 69.6 %; flash died of the prompt's mask (fixed since,
                # not re-run); 2:4 with PDL 1.14x decode, 1.30x prefill
      for kernel in flash_attention efficient_attention math; do
        phases=decode@1x512; [ $kernel = flash_attention ] && phases=decode@1x512,prefill@8x2048
        bench "attention-$kernel" --methods dense --phases $phases --inductor triton.enable_pdl=true \
            --attention-kernel $kernel
      done
      bench attention-pdl-2-4 --methods dense,sparsegpt --pattern 2:4 --layers 2 --inductor triton.enable_pdl=true \
          --phases decode@1x512,prefill@8x2048 ;;
    flash)      # the row `attention` lost: SDPA pinned to flash. Upstream FlashAttention-2 splits the cache
                # across SMs (split-KV) when heads × query blocks leave SMs idle, as decode@1x512's 32 × 1 do;
                # whether torch's build of it does is what this row shows (cuDNN's kernel spends 0.28 ms per
                # step reading 0.06 ms worth of cache); decode, then prefill (~90 s)
      bench attention-flash --methods dense --phases decode@1x512,prefill@8x2048 --attention-kernel flash_attention ;;
    decode-kernels)  # harness.serving.decode_kernels' Triton GEMV and split-KV attention against cuBLAS and SDPA: the GPU
                # tests, the per-product and per-attention-shape bench (tile settings), then dense decode on
                # them (~4 min)
      python3 -m pytest -q -p no:cacheprovider tests/test_decode_kernels.py 2>&1 | tail -30 \
          | tee "$out/decode-kernels-tests.log" || true
      timeout 240 python3 benchmarks/kernels/decode_kernels_bench.py 2>&1 | tee "$out/decode-kernels-bench.log" || true
      [ -n "${WITH_TORCH:-}" ] && bench decode-torch --methods dense --phases decode@1x512,decode@16x512
      bench decode-triton --methods dense --phases decode@1x512,decode@16x512 --decode-kernels triton --profile ;;
    scope)      # every phase of dense and 2:4 in the block scope: its compile time per method (goal ≤ ~60 s)
      bench scope-blocks --methods dense,sparsegpt --pattern 2:4 --compile-scope blocks \
          --phases decode@1x512,decode@16x512,prefill@8x2048 ;;
    prefill24)  # 2:4 at prefill@8x2048 against dense, fused, with each row's top kernels, on cuSPARSELt
                # (algorithms tuned for the phase). Not CUTLASS: torch builds its 2:4 kernels for
                # compute capability 8.x only (H200 is 9.0; `--sparse-backend cutlass` is refused there)
                # 2026-12-03: cuSPARSELt 0.8 fails the algorithm search of a transposed-output plan
                # ("internal error" in cusparseLtMatmulSearch; the 7B row died of an illegal instruction
                # after it): the default row searches the algorithm and copies the output, the second
                # keeps the transposed output on the default algorithm (2 blocks: 0.70× for the
                # latter; the searched row's 1.45× was timed beside another job: re-measure)
      bench prefill-2-4 --methods dense,sparsegpt --pattern 2:4 --phases prefill@8x2048 --profile
      bench prefill-2-4-transposed --methods sparsegpt --pattern 2:4 --phases prefill@8x2048 \
          --sparse-transposed-output ;;
    copy)       # where each 2:4 product's column-major output becomes rows (--sparse-output-copy): inside
                # inductor's fused consumer ("none"), in an op of its own for q/k/v ("attention", the default
                # since 2026-12-04) or for every product ("all"). 2 blocks of the 7B shape, prefill@8x2048,
                # each against dense in its own run (2026-12-04, H200: none 1.118x, attention 1.285x, all
                # 1.258x; the full 7B shape with "attention": 1.32x). Session 9's profile of the full model with "none":
                # RoPE + KV-cache kernels reading the transposed q/k/v took 67 ms of a 329 ms step
      python3 -m pytest -q -p no:cacheprovider tests/test_throughput.py -k "semi_structured or q_k_v or row_copy" \
          2>&1 | tail -30 | tee "$out/copy-tests.log" || true
      for copy in none attention all; do
        bench "copy-$copy" --methods dense,sparsegpt --pattern 2:4 --phases prefill@8x2048 --layers 2 \
            --sparse-output-copy "$copy" --profile
      done ;;
    unfused)    # what fusing q/k/v and gate/up gives, decode and 2:4 prefill
      bench decode-unfused --methods dense --phases decode@1x512 --no-fuse
      bench prefill-2-4-unfused --methods dense,sparsegpt --pattern 2:4 --phases prefill@8x2048 --no-fuse ;;
    full-decode)   # the tables of leaderboards/llama-2-7b-shape/ (issue 18, item 4), once the defaults are settled:
                   # 8 rows, one call
      BENCH_S=${BENCH_S:-570} bench speed-decode --methods dense,slicegpt,intraslice,sparsegpt --ratio 0.25 --pattern 2:4 \
          --phases decode@1x512,decode@16x512 ;;
    full-decode1)  # the decode@1x512 rows of the tables alone, after the GPU tests of harness.serving.decode_kernels
                   # (4 rows, ~4 min: the decode@16x512 rows have no one-row product)
      python3 -m pytest -q -p no:cacheprovider tests/test_decode_kernels.py 2>&1 | tail -5 | tee "$out/decode-kernels-tests.log" || true
      BENCH_S=${BENCH_S:-300} bench speed-decode1 --methods dense,slicegpt,intraslice,sparsegpt --ratio 0.25 --pattern 2:4 \
          --phases decode@1x512 ;;
    full-prefill)  # 4 rows: with `decode` or `prefill24` in one call
      BENCH_S=${BENCH_S:-300} bench speed-prefill --methods dense,slicegpt,intraslice,sparsegpt --ratio 0.25 --pattern 2:4 \
          --phases prefill@8x2048 ;;
    full-match)    # the matched 1.25x prefill search for the structured methods, one call (2026-12-04: 575 s
                   # with 2:4 in it, cut after the 2:4 probe: 2:4 has a call of its own, `full-match-2-4`)
      BENCH_S=${BENCH_S:-570} bench match-full --methods dense,slicegpt,intraslice --match speedup:1.25 --phases prefill@8x2048 ;;
    full-match-2-4)  # 2:4 at the same target: one probe at r = 0.5 and its row (2026-12-04: 192 s)
      BENCH_S=${BENCH_S:-300} bench match-2-4 --methods dense,sparsegpt --pattern 2:4 --match speedup:1.25 --phases prefill@8x2048 ;;
  esac
done
