#!/usr/bin/env bash
# Matched ratios on a checkpoint that already holds exact zeros (issue 19): Qwen2.5-Coder-0.5B
# from a Q4_K_M GGUF (dequantised weights: ~5 % exact zeros), every method at r = 0.2 and 0.3,
# on the CPU with a small calibration set. The harness refuses any row whose measured ratio
# misses its target by more than ±0.005, so a finished table is the check.
#   bash leaderboards/qwen_zeros.sh [MODEL_DIR] [OUT_DIR]
# MODEL_DIR gets the GGUF from ../shared/tools/get-model (an offline stand-in for the hub).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
models=${1:-models}; out=${2:-results/qwen-zeros}
gguf=$("$here/../../shared/tools/get-model" qwen2.5-0.5b "$models" | tail -1 | cut -d' ' -f1)
harness run --model "$gguf" --methods dense,magnitude,wanda,sparsegpt,besa,slicegpt,intraslice \
    --ratios 0.2,0.3 --calib wikitext2:8x256 --eval ppl:wikitext2 --eval-windows 2 \
    --eval-length 512 --dtype float32 --out "$out" || echo "some runs failed (see their records)"
harness leaderboard "$out" --out "$here/zeros" --no-plots
