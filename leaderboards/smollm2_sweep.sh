#!/usr/bin/env bash
# The SmolLM2 leaderboard: every built-in method at matched ratios, IntraSlice's ablations,
# N:M patterns, and SliceGPT's native slicing fractions, with one shared calibration set.
#   bash leaderboards/smollm2_sweep.sh [OUT_DIR] [extra harness-run flags...]
# Defaults are the papers' protocol (128 x 2048 calibration, every WikiText-2 test window);
# a GPU makes it take minutes. Add e.g. `--eval-windows 8 --calib wikitext2:32x512` on a CPU.
# Finished runs are skipped, so an interrupted sweep resumes where it stopped.
set -euo pipefail
out=${1:-results/smollm2}; shift || true
common=(--calib wikitext2:128x2048 --eval ppl:wikitext2 --dtype float32 --out "$out" "$@")
run() { harness run "$@" "${common[@]}" || echo "some runs failed (see their records)"; }
run --methods dense,magnitude,wanda,sparsegpt,slicegpt,intraslice --ratios 0.1,0.2,0.3,0.5
run --methods intraslice-uniform,intraslice-mlp --ratios 0.1,0.2,0.3
run --methods intraslice-vo --ratios 0.05,0.1
run --methods besa --ratios 0.5,0.3,0.2
for pattern in 2:4 4:8; do
  run --methods magnitude,wanda,sparsegpt --pattern "$pattern"
done
for s in 0.2 0.25 0.3; do
  run --methods slicegpt -o slicegpt.slicing=$s
done
harness leaderboard "$out" --out "$(dirname "$0")"
