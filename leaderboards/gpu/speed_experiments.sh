#!/usr/bin/env bash
# Issue 18's experiments on the 7B shape in one device call (random weights: nothing to carry
# but the wheels): where dense decode loses to the HBM roofline and where 2:4 prefill loses to
# dense. Each line is one `harness bench speed` run (dense re-measured in each, same process);
# JSON rows land in $OUT. Each row costs ~60 s on an H200 (compile 24–36 s of it): a 10-minute
# call holds about 8 rows: run `prefill24` (4 rows) and `decode` (5 rows, autotuning last: it compiles
# longest) in a call each, then `full-decode`, `full-prefill` and `full-match` in a call each.
# Call: carry [.device/whl]
#   python3 -m pip install -q --no-index --no-deps --target /tmp/dev/site .device/whl/*.whl && \
#   PYTHONPATH=/tmp/dev/site bash leaderboards/gpu/speed_experiments.sh [EXPERIMENT ...]
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-/tmp/dev/site}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true
out=${OUT:-/tmp/out}; mkdir -p "$out"
# BENCH_ARGS (e.g. "--compile-scope blocks") is added to every run: the settings the experiments chose
bench() { local name=$1; shift; echo "== $name: harness bench speed $* ${BENCH_ARGS:-}"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  # a run longer than BENCH_S (default 240 s; the full tables 570 s) is cut: the call goes on to the next
  timeout "${BENCH_S:-240}" python3 -m harness.cli bench speed --shape llama-2-7b "$@" ${BENCH_ARGS:-} \
    --json "$out/$name.json" 2>&1 \
    | grep -v "it/s\]$" || true; }
for experiment in ${@:-prefill24}; do
  case $experiment in
    decode)     # dense decode@1x512 against the roofline (2026-12-03, H200, step scope, fused: 74 %):
                # where the time goes; regional compile (speed and compile time against the step's);
                # gpt-fast's inductor setting (tuned reductions and pointwise kernels); Triton products
                # with programmatic dependent launch; autotuned
                # products, compiled per block to keep autotuning to the distinct shapes
      bench decode-fused --methods dense --phases decode@1x512 --profile
      bench decode-blocks --methods dense --phases decode@1x512 --compile-scope blocks
      bench decode-cdt --methods dense --phases decode@1x512 --inductor coordinate_descent_tuning=true
      # every decode product as an inductor kernel (mul + sum), fusable with its neighbours and
      # launched with Hopper's programmatic dependent launch: fewer, overlapping small kernels
      bench decode-triton-pdl --methods dense --phases decode@1x512 --inductor decompose_mem_bound_mm=true \
          --inductor coordinate_descent_tuning=true --inductor triton.enable_pdl=true
      bench decode-autotune --methods dense --phases decode@1x512 --compile-scope blocks \
          --compile-mode max-autotune-no-cudagraphs ;;
    scope)      # every phase of dense and 2:4 in the block scope: its compile time per method (goal ≤ ~60 s)
      bench scope-blocks --methods dense,sparsegpt --pattern 2:4 --compile-scope blocks \
          --phases decode@1x512,decode@16x512,prefill@8x2048 ;;
    prefill24)  # 2:4 at prefill@8x2048 against dense, fused, with each row's top kernels: cuSPARSELt
                # (algorithms tuned for the phase), then CUTLASS
      bench prefill-2-4 --methods dense,sparsegpt --pattern 2:4 --phases prefill@8x2048 --profile
      bench prefill-2-4-cutlass --methods dense,sparsegpt --pattern 2:4 --phases prefill@8x2048 \
          --sparse-backend cutlass ;;
    unfused)    # what fusing q/k/v and gate/up gives, decode and 2:4 prefill
      bench decode-unfused --methods dense --phases decode@1x512 --no-fuse
      bench prefill-2-4-unfused --methods dense,sparsegpt --pattern 2:4 --phases prefill@8x2048 --no-fuse ;;
    full-decode)   # the tables of leaderboards/gpu/ (issue 18, item 4), once the defaults are settled:
                   # 8 rows, one call
      BENCH_S=${BENCH_S:-570} bench speed-decode --methods dense,slicegpt,intraslice,sparsegpt --ratio 0.25 --pattern 2:4 \
          --phases decode@1x512,decode@16x512 ;;
    full-prefill)  # 4 rows: with `decode` or `prefill24` in one call
      BENCH_S=${BENCH_S:-300} bench speed-prefill --methods dense,slicegpt,intraslice,sparsegpt --ratio 0.25 --pattern 2:4 \
          --phases prefill@8x2048 ;;
    full-match)    # the matched 1.25x prefill search for every method, one call
      BENCH_S=${BENCH_S:-570} bench match-full --methods dense,slicegpt,intraslice,sparsegpt --match speedup:1.25 --phases prefill@8x2048 ;;
  esac
done
