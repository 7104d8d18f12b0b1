#!/usr/bin/env bash
# Issue 17 on the GPU machine: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantised once into
# the cache), full protocol (128 × 2048 calibration, all WikiText-2 test windows of 2048), float16.
# Parts first: see prepare_qwen.sh. Records persist in $store/qwen while the machine is warm and
# a run resumes from them; each step returns them all under $OUT/qwen-records.tgz (sweep_steps.sh). A call stops
# starting steps, and cuts the step in flight, at CALL_S seconds (default 570, inside the 600 s
# call limit), so at most the cell in flight is lost; the next call (or, from committed records
# copied back into $store/qwen, the next session) continues.
#   CALL_S=570 bash leaderboards/gpu/qwen_sweep.sh [STAGE ...]   stages: zeroshot ppl speed (default: all)
# In the background instead (2026-12-03d: the speed stage ran so, 6 minutes): `on_device.sh bg qwen
# "CALL_S=3000 bash leaderboards/gpu/qwen_sweep.sh speed"`, `on_device.sh poll qwen`; records in /tmp/dev/out-qwen.
# Parallel zero-shot cells: also carry .device/raya and .device/rayb (prepare_ray.sh), one call each
# with `on_device.sh stash`, and run with RAY_GPUS=0.25.
set -euo pipefail
start=$(date +%s)
store=/tmp/dev
if [ ! -e "$store/qwen.gguf" ]; then
  cat "$store"/q{1,2,3,4,5,6,7,8,9}/qwen.part > "$store/qwen.gguf"
  echo "$(cat "$store/zs/qwen.sha256")  $store/qwen.gguf" | sha256sum -c --quiet
  rm -rf "$store"/q?
fi
if [ ! -e "$store/zs/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/whl/*.whl "$store"/zs/whl/*.whl
  PYTHONPATH="$store/site" python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  mkdir -p "$store/data/zeroshot" && cp "$store"/zs/zeroshot/* "$store/data/zeroshot/"
  touch "$store/zs/.installed"
fi
export PYTHONPATH=$store/site HARNESS_DATA_DIR=$store/data HARNESS_CACHE_DIR=$store/cache PYTHONUNBUFFERED=1 \
       TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1
name=qwen committed=leaderboards/records/qwen2.5-0.5b-h200
source leaderboards/gpu/sweep_steps.sh
sweep_begin
common=(--model "$store/qwen.gguf" --dtype float16 --calib wikitext2:128x2048 --out "$out")
zeroshot=zeroshot:piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa
for stage in ${@:-zeroshot ppl speed}; do
  case $stage in
    zeroshot)  # dense, and r = 0.3 and 2:4 with the 7 zero-shot tasks as well
      step --methods dense,intraslice,slicegpt,wanda,sparsegpt,magnitude,besa --ratios 0.3 --eval ppl:wikitext2 --eval "$zeroshot"
      step --methods wanda,sparsegpt,magnitude --pattern 2:4 --eval ppl:wikitext2 --eval "$zeroshot" ;;
    ppl)       # every method at r = 0.2 and 0.5, the sparsity methods at 4:8
      step --methods intraslice,slicegpt,wanda,sparsegpt,magnitude,besa --ratios 0.2,0.5
      step --methods magnitude,wanda,sparsegpt --pattern 4:8 ;;
    speed)     # structured methods at a matched measured speedup of 1.2x, quality measured there
      step --methods intraslice,slicegpt --match speedup:1.2 --phase prefill@8x2048 --eval ppl:wikitext2 ;;
  esac
done
