#!/usr/bin/env bash
# Build .device/ parts for a Qwen GPU sweep on top of prepare_device.sh:
#   bash benchmarks/gpu/prepare_qwen.sh [qwen2.5-0.5b|qwen2.5-1.5b] [MODELS_DIR]
#   .device/q1 … .device/qN   the model's Q4_K_M GGUF in 44 MiB parts, one per call beside the working tree
#                             (a call carries at most 64 MiB in all; 0.5B: 11 parts, 1.5B: 26)
#   .device/zs                lm-eval and the packages it needs that the device image lacks
#                             (py3.12 wheels, the locked versions), the 7+1 zero-shot task files,
#                             the GGUF's sha256 and which model it is
# Calls on the device machine (it stays warm 30 s between calls; each carries ≤ 64 MiB):
#   1. carry [.device/whl, .device/data, .device/zs]   bash benchmarks/gpu/on_device.sh stash
#   2..N+1. carry [.device/qK]                          bash benchmarks/gpu/on_device.sh stash
#   (1.5B, Ray: also .device/raya and .device/rayb from prepare_ray.sh, one call each)
#   then:  bash benchmarks/gpu/qwen_sweep.sh   (resumable; see there)
# The GGUF comes from ../shared/tools/get-model (an offline stand-in for the hub; not the product's job).
set -euo pipefail
cd "$(dirname "$0")/../.."
dev=.device
model=${1:-qwen2.5-0.5b} models=${2:-/work/models}
case $model in qwen2.5-0.5b|qwen2.5-1.5b) ;; *) echo "model: qwen2.5-0.5b or qwen2.5-1.5b, got $model" >&2; exit 2 ;; esac
gguf=$(../shared/tools/get-model "$model" "$models" | tail -1 | cut -d' ' -f1)
rm -rf "$dev"/q[0-9]* "$dev/zs"; mkdir -p "$dev/zs/whl" "$dev/zs/zeroshot"
split -b 44M -d -a 2 "$gguf" "$dev/qpart"
for part in "$dev"/qpart??; do n=$(( 10#${part: -2} + 1 )); mkdir -p "$dev/q$n"; mv "$part" "$dev/q$n/qwen.part"; done
sha256sum "$gguf" | cut -d' ' -f1 > "$dev/zs/qwen.sha256"
echo "$model" > "$dev/zs/qwen.model"
pin() { grep -i "^$1==" .ci/constraints.txt; }
pip_get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$dev/zs/whl" "$@"
}
# lm-eval's requirements the image lacks (it has pyarrow, scikit-learn, sacrebleu, aiohttp, xxhash, ...)
for p in lm_eval datasets dill multiprocess evaluate pytablewriter more-itertools nltk DataProperty \
         mbstrdecoder pathvalidate tabledata tcolorpy typepy chardet; do
  pip_get "$(pin "$p")"
done
for p in rouge_score sqlitedict word2number; do  # pure-Python sources only: built into wheels here
  python3 -m pip wheel -q --no-deps -w "$dev/zs/whl" "$(pin "$p")"
done
cp ../shared/data/zeroshot/*.jsonl ../shared/data/zeroshot/SHA256SUMS "$dev/zs/zeroshot/"
du -sh "$dev"/q[0-9]* "$dev/zs"
