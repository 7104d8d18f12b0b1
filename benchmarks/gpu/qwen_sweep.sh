#!/usr/bin/env bash
# A Qwen sweep on the GPU machine (Q4_K_M GGUF, dequantised once into the cache), for the model
# prepare_qwen.sh cut into parts:
#   qwen2.5-0.5b  one stage per sweep file, experiments/qwen2.5-0.5b-STAGE.toml (zeroshot, ppl, speed by
#                 default; quantization, pruning-baselines when named), feeding
#                 leaderboards/qwen2.5-coder-0.5b-instruct-awq/
#   qwen2.5-1.5b  experiments/qwen2.5-1.5b.toml (stage "all") through Ray, quality cells RAY_GPUS
#                 (default 0.25) of the GPU each, speed cells alone, feeding
#                 leaderboards/qwen2.5-coder-1.5b-instruct/ (needs .device/raya and .device/rayb)
# Records persist in $store/qwen while the machine is warm and a run resumes from them (and, on a
# fresh machine, from the committed records); each stage returns them all under $OUT/qwen-records.tgz
# (sweep_steps.sh): commit them to the leaderboard's records/. A call stops starting stages, and cuts
# the stage in flight, at CALL_S seconds (default 570, inside the 600 s call limit), so at most the
# cell in flight is lost; the next call continues.
#   CALL_S=570 bash benchmarks/gpu/qwen_sweep.sh [STAGE ...]
# In the background instead: `on_device.sh bg qwen "CALL_S=3000 bash benchmarks/gpu/qwen_sweep.sh"`,
# `on_device.sh poll qwen`; records in /tmp/dev/out-qwen.
# Parallel zero-shot cells (0.5B): also carry .device/raya and .device/rayb (prepare_ray.sh), one
# call each with `on_device.sh stash`, and run with RAY_GPUS=0.25.
set -euo pipefail
start=$(date +%s)
store=/tmp/dev
if [ ! -e "$store/qwen.gguf" ]; then  # the parts in their order (q1, q2, ..., q10, ...)
  ls -d "$store"/q[0-9]* | sort -V | sed 's|$|/qwen.part|' | xargs cat > "$store/qwen.gguf.part"
  echo "$(cat "$store/zs/qwen.sha256")  $store/qwen.gguf.part" | sha256sum -c --quiet
  mv "$store/qwen.gguf.part" "$store/qwen.gguf"; rm -rf "$store"/q[0-9]*
fi
if [ ! -e "$store/zs/.installed" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$store/site" "$store"/whl/*.whl "$store"/zs/whl/*.whl
  PYTHONPATH="$store/site" python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  mkdir -p "$store/data/zeroshot" && cp "$store"/zs/zeroshot/* "$store/data/zeroshot/"
  touch "$store/zs/.installed"
fi
export PYTHONPATH=$store/site HARNESS_DATA_DIR=$store/data HARNESS_CACHE_DIR=$store/cache PYTHONUNBUFFERED=1 \
       TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1
model=$(cat "$store/zs/qwen.model" 2>/dev/null || echo qwen2.5-0.5b)
if [ "$model" = qwen2.5-1.5b ]; then
  committed=leaderboards/qwen2.5-coder-1.5b-instruct/records stages=${*:-all}
  export RAY_GPUS=${RAY_GPUS:-0.25}
else
  committed=leaderboards/qwen2.5-coder-0.5b-instruct-awq/records stages=${*:-zeroshot ppl speed}
fi
name=qwen
source benchmarks/gpu/sweep_steps.sh
sweep_begin
common=(--model "$store/qwen.gguf" --out "$out")
for stage in $stages; do
  if [ "$model" = qwen2.5-1.5b ]; then config=experiments/qwen2.5-1.5b.toml; else config=experiments/qwen2.5-0.5b-$stage.toml; fi
  [ -e "$config" ] || { echo "unknown stage $stage (0.5B: zeroshot, ppl, speed, quantization, pruning-baselines; 1.5B: all)" >&2; exit 2; }
  step --config "$config"
done
