#!/usr/bin/env bash
# Issue 17, item 1: SmolLM2-135M, full protocol (128 × 2048 calibration, all WikiText-2 windows),
# float16, with the 7 zero-shot tasks, at r = 0.3, 0.5 and 2:4. Parts: prepare_device.sh and
# prepare_qwen.sh (for .device/zs: lm-eval's wheels and the task files); calls:
#   1. carry [.device/whl, .device/data, .device/zs]  bash leaderboards/gpu/on_device.sh stash
#   2. carry [.device/p1]                             bash leaderboards/gpu/on_device.sh stash
#   3. carry [.device/p2]                             bash leaderboards/gpu/on_device.sh stash && bash leaderboards/gpu/smollm2_zeroshot.sh
# Resumable: records stay in $store/smollm2-zs while the machine is warm; each step returns them
# all under $OUT/smollm2-zs-records.tgz (commit to leaderboards/records/smollm2-zeroshot-h200/). A
# call stops at CALL_S seconds (default 570), cutting at most the cell in flight; rerun to go on.
# Or in the background, with no call deadline (the session works while it runs; short calls keep the
# machine and show progress; no speed measurement on the GPU meanwhile):
#   bash leaderboards/gpu/on_device.sh bg zs "RAY_GPUS=0.125 CALL_S=3000 bash leaderboards/gpu/smollm2_zeroshot.sh"
#   bash leaderboards/gpu/on_device.sh poll zs      # ... then: cp /tmp/dev/out-zs/*.tgz $OUT/
# Table: harness leaderboard leaderboards/records/smollm2-zeroshot-h200 --out leaderboards/smollm2-zeroshot-h200 \
#            --metrics 'ppl:*,zeroshot:*' --deltas 'ppl:*,zeroshot:avg'
# Parallel zero-shot cells: also carry .device/raya and .device/rayb (prepare_ray.sh), one call each
# with `on_device.sh stash`, and run with RAY_GPUS=0.125: 8 cells at once, each capping its allocator
# at its share (17.4 GB of an H200). Not finer: an IntraSlice cell (its reconstruction variant) at
# 128 × 2048 peaked at 12.5 GB (records/smollm2-intraslice-h200), and lm-eval's per-request Python
# work wants a core per cell.
set -euo pipefail
start=$(date +%s)
store=/tmp/dev
if [ ! -e "$store/zs/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/zs/whl/*.whl
  mkdir -p "$store/data/zeroshot" && cp "$store"/zs/zeroshot/* "$store/data/zeroshot/"
  touch "$store/zs/.installed"
fi
source <(bash leaderboards/gpu/on_device.sh env)
export HF_DATASETS_OFFLINE=1
name=smollm2-zs committed=leaderboards/records/smollm2-zeroshot-h200
source leaderboards/gpu/sweep_steps.sh
sweep_begin
zeroshot=zeroshot:piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa
common=(--model "$SMOLLM2" --dtype float16 --calib wikitext2:128x2048 --out "$out" --eval ppl:wikitext2 --eval "$zeroshot")
# every cell of a target type in one run: with RAY_GPUS they run side by side
step --methods dense,intraslice,slicegpt,wanda,sparsegpt,magnitude,besa --ratios 0.3,0.5
step --methods magnitude,wanda,sparsegpt --pattern 2:4
