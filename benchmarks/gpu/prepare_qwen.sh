#!/usr/bin/env bash
# Build .device/ parts for the Qwen2.5-0.5B GPU sweep (issue 17) on top of prepare_device.sh:
#   .device/q1 … .device/q9   the Qwen2.5-Coder-0.5B Q4_K_M GGUF (491 MB) in 56 MiB parts, one per call
#   .device/zs                lm-eval and the packages it needs that the device image lacks
#                             (py3.12 wheels, the locked versions), and the 7+1 zero-shot task files
# Calls on the device machine (it stays warm 30 s between calls; each carries ≤ 64 MiB):
#   1. carry [.device/whl, .device/data, .device/zs]   bash benchmarks/gpu/on_device.sh stash
#   2..10. carry [.device/qN]                          bash benchmarks/gpu/on_device.sh stash
#   then:  bash benchmarks/gpu/qwen_sweep.sh        (resumable: records persist in /tmp/dev/qwen while warm,
#          and each call returns them under $OUT; commit them to leaderboards/qwen2.5-coder-0.5b-instruct-awq/records/)
# The GGUF comes from ../shared/tools/get-model (an offline stand-in for the hub; not the product's job).
set -euo pipefail
cd "$(dirname "$0")/../.."
dev=.device
models=${1:-/work/models}
gguf=$(../shared/tools/get-model qwen2.5-0.5b "$models" | tail -1 | cut -d' ' -f1)
rm -rf "$dev"/q? "$dev/zs"; mkdir -p "$dev/zs/whl" "$dev/zs/zeroshot"
split -b 56M -d -a 1 "$gguf" "$dev/qpart"
for part in "$dev"/qpart?; do n=$(( ${part: -1} + 1 )); mkdir -p "$dev/q$n"; mv "$part" "$dev/q$n/qwen.part"; done
sha256sum "$gguf" | cut -d' ' -f1 > "$dev/zs/qwen.sha256"
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
du -sh "$dev"/q? "$dev/zs"
