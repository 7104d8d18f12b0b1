#!/usr/bin/env bash
# The Qwen2.5-Coder-0.5B-Instruct sweep on the GPU machine (Q4_K_M GGUF, dequantised once into the
# cache): one stage per sweep file, experiments/qwen2.5-0.5b-{zeroshot,ppl,speed}.toml, feeding
# leaderboards/qwen2.5-coder-0.5b-instruct-awq/. Parts first: see prepare_qwen.sh. Records persist in
# $store/qwen while the machine is warm and a run resumes from them (and, on a fresh machine, from the
# committed records); each stage returns them all under $OUT/qwen-records.tgz (sweep_steps.sh): commit
# them to leaderboards/qwen2.5-coder-0.5b-instruct-awq/records/. A call stops starting stages, and cuts
# the stage in flight, at CALL_S seconds (default 570, inside the 600 s call limit), so at most the
# cell in flight is lost; the next call continues.
#   CALL_S=570 bash benchmarks/gpu/qwen_sweep.sh [STAGE ...]   stages: zeroshot ppl speed (default: all)
# In the background instead: `on_device.sh bg qwen "CALL_S=3000 bash benchmarks/gpu/qwen_sweep.sh speed"`,
# `on_device.sh poll qwen`; records in /tmp/dev/out-qwen.
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
name=qwen committed=leaderboards/qwen2.5-coder-0.5b-instruct-awq/records
source benchmarks/gpu/sweep_steps.sh
sweep_begin
common=(--model "$store/qwen.gguf" --out "$out")
for stage in ${@:-zeroshot ppl speed}; do
  config=experiments/qwen2.5-0.5b-$stage.toml
  [ -e "$config" ] || { echo "unknown stage $stage (zeroshot, ppl, speed)" >&2; exit 2; }
  step --config "$config"
done
